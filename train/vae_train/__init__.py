"""mnist-vae's training side: the seed VAE in PyTorch, MNIST data, training loop, checkpoints.

Without PyTorch this package still imports (empty), so `vae-train` can say how to install it.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401  (only to learn whether the training extra is installed)
except ImportError:  # vae_train.cli:main prints the install line
    __all__: list[str] = []
else:
    from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
    from .data import MnistImages, load_mnist
    from .model import VAE, VAEConfig, loss_terms
    from .train import TrainingInterrupted, TrainSettings, train

    __all__ = [
        "VAE",
        "Checkpoint",
        "CheckpointError",
        "MnistImages",
        "TrainSettings",
        "TrainingInterrupted",
        "VAEConfig",
        "load_checkpoint",
        "load_mnist",
        "loss_terms",
        "save_checkpoint",
        "train",
    ]
