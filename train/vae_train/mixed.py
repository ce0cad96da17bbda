"""bf16 training with float32 master weights: bfloat16 copies of the weights, made once per step.

`torch.autocast` casts every weight to bfloat16 at every use and allocates a new tensor each
time, and on the CPU those casts were a fifth of a bf16 step (bench/train_profile.py;
docs/vae-train.md#speed). Here each `nn.Linear` of the model gets a bfloat16 copy of its weight
and bias, allocated once and refreshed in place after each Adam step (`Bf16Weights.refresh`);
the layer's forward runs `addmm` on the copies, and its backward computes the input's gradient
in bfloat16 and the weight's and bias's in float32 for the float32 master weights (Adam, the
checkpoint and the exported graphs stay float32). Element-wise work stays where autograd puts it:
ReLU on bfloat16 activations, the reparameterisation and the loss in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

BF16 = torch.bfloat16


class _Linear16(torch.autograd.Function):
    """y = x W^T + b in bfloat16 from the copies; gradients for the float32 masters."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        weight16: torch.Tensor,
        bias16: torch.Tensor,
    ) -> torch.Tensor:
        x16 = x if x.dtype == BF16 else x.to(BF16)
        ctx.save_for_backward(x16, weight16)
        return torch.addmm(bias16, x16, weight16.t())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x16, weight16 = ctx.saved_tensors
        g = grad if grad.dtype == BF16 else grad.to(BF16)
        grad_x = g.mm(weight16) if ctx.needs_input_grad[0] else None  # autograd casts to x's dtype
        grad_w = g.t().mm(x16).float()
        grad_b = g.sum(0, dtype=torch.float32)
        return grad_x, grad_w, grad_b, None, None


class Bf16Weights:
    """While entered, every `nn.Linear` of `model` computes from bfloat16 copies of its weight
    and bias (refreshed by `refresh()`, which the training step calls after each Adam step);
    on exit the layers are plain float32 again (evaluation, figures and export use those)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if type(m) is nn.Linear and m.bias is not None]
        self.copies = [(m.weight.detach().to(BF16), m.bias.detach().to(BF16)) for m in self.layers]

    @torch.no_grad()
    def refresh(self) -> None:
        for m, (w16, b16) in zip(self.layers, self.copies, strict=True):
            w16.copy_(m.weight)
            b16.copy_(m.bias)

    def __enter__(self) -> Bf16Weights:
        self.refresh()
        for m, (w16, b16) in zip(self.layers, self.copies, strict=True):
            m.forward = _bound(m, w16, b16)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for m in self.layers:
            del m.forward  # the class's forward again


def _bound(m: nn.Linear, w16: torch.Tensor, b16: torch.Tensor) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _Linear16.apply(x, m.weight, m.bias, w16, b16)  # type: ignore[no-untyped-call]
        return out

    return forward
