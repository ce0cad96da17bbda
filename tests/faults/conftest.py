"""Fixtures of the fault suite (helpers in processes.py): a tiny model, trained and exported."""

from __future__ import annotations

import pytest
from helpers import write_mnist_dir
from processes import Tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from vae_export.onnx_export import export_checkpoint
    from vae_train.model import VAEConfig
    from vae_train.training import TrainSettings, train

    root = tmp_path_factory.mktemp("tiny")
    data = write_mnist_dir(root / "data", 256, 64)
    settings = TrainSettings(epochs=1, batch_size=64, seed=1, device="cpu")
    train(settings, VAEConfig(hidden_dim=16, latent_dim=2), out_dir=root / "run", data_dir=data)
    result = export_checkpoint(root / "run" / "model.pt", root / "onnx")
    return Tiny(
        data, root / "run" / "model.pt", result.encoder, result.decoder, result.manifest_path
    )
