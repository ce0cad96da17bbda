"""The seed VAE (784-400-20, ReLU, sigmoid output), its config, and its loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae_runtime.contract import IMAGE_PIXELS
from vae_runtime.errors import InvalidArgumentError


@dataclass(frozen=True)
class VAEConfig:
    """The arguments that rebuild the model; stored as a plain dict in the checkpoint."""

    hidden_dim: int = 400
    latent_dim: int = 20

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Rebuild from a stored dict; unknown keys are an error, not silently dropped."""
        unknown = set(data) - {"hidden_dim", "latent_dim"}
        if unknown:
            raise InvalidArgumentError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class VAE(nn.Module):
    """Encoder fc1 -> (fc2_mu, fc2_logvar); decoder fc3 -> fc4 -> sigmoid. Layer names are the
    seed's (the classic PyTorch example) and stay, so state dicts remain interchangeable."""

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        self.config = config
        self.fc1 = nn.Linear(IMAGE_PIXELS, config.hidden_dim)
        self.fc2_mu = nn.Linear(config.hidden_dim, config.latent_dim)
        self.fc2_logvar = nn.Linear(config.hidden_dim, config.latent_dim)
        self.fc3 = nn.Linear(config.latent_dim, config.hidden_dim)
        self.fc4 = nn.Linear(config.hidden_dim, IMAGE_PIXELS)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 784) pixels in [0, 1] -> mu, logvar, each (B, latent_dim)."""
        h = F.relu(self.fc1(x))
        return self.fc2_mu(h), self.fc2_logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 784) pre-sigmoid logits (the loss works on these, stably)."""
        return self.fc4(F.relu(self.fc3(z)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 784) pixel means in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One ELBO pass. `eps` ~ N(0, I) of shape (B, latent_dim) is drawn by the caller from
        its own generator, so runs are reproducible and resumable. Returns logits, mu, logvar."""
        mu, logvar = self.encode(x)
        z = mu + eps * torch.exp(0.5 * logvar)  # reparameterisation
        return self.decode_logits(z), mu, logvar


def loss_terms(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed over the batch: Bernoulli negative log-likelihood (BCE over the 784 pixels, from
    logits) and the analytic KL(q(z|x) || N(0, I)). Divide by the batch size for nats per image."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce, kl
