"""Fixtures for the training tests: a tiny in-memory data set and tiny settings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from vae_train.data import MnistImages
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings


@pytest.fixture(scope="session")
def tiny_data(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> MnistImages:
    """300 training and 100 test digits, in memory."""
    train, _ = make_digits(300, 10)
    test, _ = make_digits(100, 11)
    return MnistImages(train=train, test=test, source="synthetic")


@pytest.fixture(scope="session")
def tiny_config() -> VAEConfig:
    """A model small enough that an epoch over tiny_data takes milliseconds."""
    return VAEConfig(hidden_dim=32, latent_dim=4)


@pytest.fixture(scope="session")
def tiny_settings() -> Callable[..., TrainSettings]:
    """Settings for the tests: cpu, batch 64 (so the last batch is partial), 2 epochs, seed 5;
    keyword arguments override."""

    def make(**overrides: object) -> TrainSettings:
        values: dict[str, object] = {"epochs": 2, "batch_size": 64, "seed": 5, "device": "cpu"}
        values.update(overrides)
        return TrainSettings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 training on this CPU even without AVX512-BF16 or AMX: where torch's probe says no,
    it is told yes, and bf16 runs emulated (correct, only slower), so its numerics are tested on
    every CPU instead of skipped. The refusal itself: test_train_options.py."""
    import torch

    if not torch.cpu._is_avx512_bf16_supported():
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
