"""The seed VAE (784-400-20, ReLU, sigmoid output), its config, and its loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae_runtime.contract import IMAGE_PIXELS, MAX_LATENT_DIM
from vae_runtime.errors import InvalidArgumentError, check_int

MAX_HIDDEN_DIM = 16384  # 26 M parameters at most: ~100 MB, ~400 MB with Adam's state


@dataclass(frozen=True)
class VAEConfig:
    """The arguments that rebuild the model; stored as a plain dict in the checkpoint."""

    hidden_dim: int = 400
    latent_dim: int = 20

    def __post_init__(self) -> None:
        # Stored as plain ints whatever was given (numpy ints would not survive a safe load).
        object.__setattr__(
            self, "hidden_dim", check_int("hidden_dim", self.hidden_dim, 1, MAX_HIDDEN_DIM)
        )
        object.__setattr__(
            self, "latent_dim", check_int("latent_dim", self.latent_dim, 1, MAX_LATENT_DIM)
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> VAEConfig:
        """Rebuild from a stored dict; unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"model config must be a dict, got {type(data).__name__}")
        unknown = set(data) - {"hidden_dim", "latent_dim"}
        if unknown:
            raise InvalidArgumentError(f"unknown model config keys: {sorted(map(str, unknown))}")
        return cls(**data)


class VAE(nn.Module):
    """Encoder fc1 -> (fc2_mu, fc2_logvar); decoder fc3 -> fc4 -> sigmoid. The layer names are
    the seed's (DESIGN.md) and stay. The classic PyTorch example (pytorch/examples, vae/main.py)
    names the two encoder heads fc21 and fc22: rename those two keys to load its state dicts."""

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
        logits: torch.Tensor = self.fc4(F.relu(self.fc3(z)))
        return logits

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
    # -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l: stable for any l, and two
    # passes over (B, 784) instead of the several binary_cross_entropy_with_logits makes
    bce = F.softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1))
    kl = 0.5 * torch.sum(logvar.exp() + mu.pow(2) - 1 - logvar)
    return bce, kl
