"""mnist-vae's training side: the seed VAE in PyTorch, MNIST data, training loop, checkpoints.

The names below load lazily (PEP 562), so importing the package, e.g. for `vae-train --help` or
to learn that PyTorch is missing, does not import torch (1.1 s of a 1.3 s start: docs/vae-train.md,
"Start-up"), and the command can set torch's thread binding before torch loads.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

_EXPORTS = {
    "Checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "MnistImages": "data",
    "load_mnist": "data",
    "VAE": "model",
    "VAEConfig": "model",
    "loss_terms": "model",
    "TrainSettings": "training",
    "train": "training",
}

__all__ = [
    "VAE",
    "Checkpoint",
    "CheckpointError",
    "MnistImages",
    "TrainSettings",
    "VAEConfig",
    "load_checkpoint",
    "load_mnist",
    "loss_terms",
    "save_checkpoint",
    "train",
]

if TYPE_CHECKING:
    from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from .data import MnistImages, load_mnist
    from .model import VAE, VAEConfig, loss_terms
    from .training import TrainSettings, train


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
