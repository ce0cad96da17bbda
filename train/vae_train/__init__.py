"""mnist-vae's training side: the seed VAE in PyTorch, MNIST data, training loop, checkpoints.

The names below load lazily (PEP 562), so importing the package, e.g. for `vae-train --help` or
to learn that PyTorch is missing, does not import torch: `vae_train.cli` checks for torch and
pins its threads before anything loads it.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "TrainingInterrupted": "training",
    "train": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
