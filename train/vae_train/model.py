"""The seed VAE (784-400-20, ReLU, sigmoid output), its config, and its loss.

Training on the CPU in float32 swaps each `nn.Linear` for `OneDnnLinear`, the same layer whose
three matmuls (forward, and the two products of its backward) call oneDNN instead of the BLAS
torch links (MKL). On AMD CPUs MKL runs its AVX2 kernels even where AVX-512 exists; oneDNN picks
by instruction set, and on the 2-core AMD EPYC development VM it ran each of the step's matmuls
about twice as fast (`bench/train_speed.py --sections linear`). The parameters, their names and
the state dict are nn.Linear's; exports and the reference build plain `VAE(config)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vae_runtime.contract import IMAGE_PIXELS, MAX_LATENT_DIM
from vae_runtime.errors import InvalidArgumentError, check_int

ONEDNN_MIN_FEATURES = 64  # smaller layers keep nn.Linear (linear_layer)
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

    def __init__(
        self, config: VAEConfig = VAEConfig(), layer: Callable[[int, int], nn.Linear] = nn.Linear
    ) -> None:
        super().__init__()
        self.config = config
        self.fc1 = layer(IMAGE_PIXELS, config.hidden_dim)
        self.fc2_mu = layer(config.hidden_dim, config.latent_dim)
        self.fc2_logvar = layer(config.hidden_dim, config.latent_dim)
        self.fc3 = layer(config.latent_dim, config.hidden_dim)
        self.fc4 = layer(config.hidden_dim, IMAGE_PIXELS)

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


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN (the op torch's own compiler emits for a frozen linear
    layer). It takes the backward's transposed views as they are, copying one where its
    kernels need another layout (~0.1 ms of a ~2 ms step: docs/vae-train.md, Speed)."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


class _OneDnnLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _onednn(grad, weight.t(), None) if need_x else None  # grad @ W
        grad_w = _onednn(grad.t(), x.t(), None) if need_w else None  # grad.T @ x
        grad_b = grad.sum(0) if need_b else None
        return grad_x, grad_w, grad_b


class OneDnnLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose matmuls run in oneDNN; 2-D float32
    inputs on the CPU only, which is where `linear_layer` chooses it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _OneDnnLinearFn.apply(x, self.weight, self.bias)  # type: ignore[no-untyped-call]
        return out


def onednn_missing(device: torch.device, compute_dtype: str = "fp32") -> str:
    """Why training does not use OneDnnLinear ("" when it does): the decision, in one place."""
    if device.type != "cpu":
        return f"oneDNN layers are for the CPU, not {device.type}"
    if compute_dtype != "fp32":
        return f"{compute_dtype} runs under autocast, which already calls oneDNN"
    if os.environ.get("VAE_ONEDNN", "1") == "0":
        return "VAE_ONEDNN=0"
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return "this torch was built without oneDNN"
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (looked up, not called)
    except (AttributeError, RuntimeError):
        return "this torch has no oneDNN linear op"
    return ""


def linear_layer(
    device: torch.device, compute_dtype: str = "fp32"
) -> Callable[[int, int], nn.Linear]:
    """What a training run builds its VAE's layers with: OneDnnLinear for the large layers
    where `onednn_missing` allows it, nn.Linear for the rest. A layer with a side below
    ONEDNN_MIN_FEATURES (the 20-wide ones next to the latent) stays nn.Linear: its matmuls take
    ~20 us either way, and oneDNN's call costs a few microseconds more."""
    if onednn_missing(device, compute_dtype):
        return nn.Linear

    def layer(in_features: int, out_features: int) -> nn.Linear:
        large = min(in_features, out_features) >= ONEDNN_MIN_FEATURES
        return (OneDnnLinear if large else nn.Linear)(in_features, out_features)

    return layer
