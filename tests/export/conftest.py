"""Export-suite fixtures: two briefly trained models (not random weights), each exported once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_export.onnx_export import ExportResult, export_checkpoint
from vae_runtime.session import Decoder, Encoder
from vae_train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vae_train.model import VAE, VAEConfig, loss_terms

# "tiny" keeps most tests fast; "seed" is the real 784-400-20 architecture, exported once.
MODELS = {"tiny": VAEConfig(hidden_dim=64, latent_dim=8), "seed": VAEConfig()}
TRAIN_STEPS = 30
BATCH = 64


@dataclass(frozen=True)
class Exported:
    """A trained model, its model.pt, the export of it, and the graphs as the runtime loads them."""

    name: str
    model: VAE
    checkpoint: Path
    result: ExportResult
    encoder: Encoder
    decoder: Decoder


def train_briefly(config: VAEConfig, images: np.ndarray, seed: int = 0) -> tuple[VAE, float]:
    """A few Adam steps of the real loss on `images` (N, 1, 28, 28): weights that have moved
    off their initialisation, so parity is tested on a model shaped by data."""
    torch.manual_seed(seed)
    model = VAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_all = torch.from_numpy(images).reshape(len(images), -1)  # (N, 784)
    loss = torch.zeros(())
    for step in range(TRAIN_STEPS):
        start = (step * BATCH) % len(images)
        x = x_all[start : start + BATCH]
        logits, mu, logvar = model(x, torch.randn(len(x), config.latent_dim))
        bce, kl = loss_terms(logits, x, mu, logvar)
        loss = (bce + kl) / len(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), float(loss.detach())


@pytest.fixture(scope="session")
def digits(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Real-looking digits as float32 (256, 1, 28, 28) in [0, 1]."""
    images, _ = make_digits(256, 0)
    return (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, digits: np.ndarray) -> dict[str, Path]:
    """model.pt of each model in MODELS, each in its own folder."""
    paths = {}
    for name, config in MODELS.items():
        model, loss = train_briefly(config, digits)
        path = tmp_path_factory.mktemp(f"ckpt-{name}") / "model.pt"
        metrics = [{"epoch": 1, "train_loss": loss, "test_loss": loss + 1.0}]
        save_checkpoint(Checkpoint(config, model.state_dict(), epoch=1, metrics=metrics), path)
        paths[name] = path
    return paths


@pytest.fixture(scope="session", params=list(MODELS))
def exported(
    request: pytest.FixtureRequest,
    checkpoints: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Exported:
    """Each model exported once per session (the dynamo exporter takes seconds)."""
    name = request.param
    path = checkpoints[name]
    model = load_checkpoint(path).build_model(path)
    result = export_checkpoint(path, tmp_path_factory.mktemp(f"onnx-{name}"))
    encoder, decoder = Encoder.load(result.encoder), Decoder.load(result.decoder)
    return Exported(name, model, path, result, encoder, decoder)
