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
    # -[x log s(l) + (1 - x) log(1 - s(l))] = softplus(l) - x l: stable for any l, and two
    # passes over (B, 784) instead of the several binary_cross_entropy_with_logits makes
    bce = F.softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1))
    kl = 0.5 * torch.sum(logvar.exp() + mu.pow(2) - 1 - logvar)
    return bce, kl


@torch.no_grad()
def loss_and_grads(
    model: VAE, x: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`loss_terms` of one ELBO pass and, written by hand, the gradient of their sum, stored in
    each parameter's `.grad`. The same numbers as autograd (tested), without its graph and with
    fewer passes over the (B, 784) tensors, which is most of the step that is not matmuls."""
    fc1, fc2_mu, fc2_logvar, fc3, fc4 = (
        model.fc1,
        model.fc2_mu,
        model.fc2_logvar,
        model.fc3,
        model.fc4,
    )
    h1 = torch.addmm(fc1.bias, x, fc1.weight.t()).clamp_min_(0)  # (B, H)
    mu = torch.addmm(fc2_mu.bias, h1, fc2_mu.weight.t())  # (B, L)
    logvar = torch.addmm(fc2_logvar.bias, h1, fc2_logvar.weight.t())  # (B, L)
    std = torch.exp(0.5 * logvar)
    z = torch.addcmul(mu, eps, std)  # reparameterisation
    h3 = torch.addmm(fc3.bias, z, fc3.weight.t()).clamp_min_(0)  # (B, H)
    logits = torch.addmm(fc4.bias, h3, fc4.weight.t())  # (B, 784)
    bce, kl = loss_terms(logits, x, mu, logvar)
    var = std * std  # = exp(logvar)

    d_logits = torch.sigmoid(logits).sub_(x)  # (B, 784): d(bce)/d(logits)
    _set_grads(fc4, d_logits, h3)
    d_h3 = torch.mm(d_logits, fc4.weight).mul_(h3 > 0)  # (B, H), through the ReLU
    _set_grads(fc3, d_h3, z)
    d_z = torch.mm(d_h3, fc3.weight)  # (B, L)
    d_mu = d_z + mu  # KL adds mu
    d_logvar = (d_z * eps * std).mul_(0.5).add_(0.5 * (var - 1))  # z and KL both depend on it
    _set_grads(fc2_mu, d_mu, h1)
    _set_grads(fc2_logvar, d_logvar, h1)
    d_h1 = torch.addmm(torch.mm(d_mu, fc2_mu.weight), d_logvar, fc2_logvar.weight)
    _set_grads(fc1, d_h1.mul_(h1 > 0), x)  # x needs no gradient: fc1's input grad is skipped
    return bce, kl


def _set_grads(layer: nn.Linear, d_out: torch.Tensor, inputs: torch.Tensor) -> None:
    """A linear layer's gradients from the gradient at its output (B, out) and its input (B, in)."""
    layer.weight.grad = torch.mm(d_out.t(), inputs)  # (out, in)
    layer.bias.grad = d_out.sum(0)  # (out,)
