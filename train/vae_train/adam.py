"""Adam through torch's fused kernel, without `torch.optim`.

Why our own: every method of `torch.optim.Optimizer` (its constructor included) is wrapped in
`torch._disable_dynamo`, which imports `torch._dynamo` on first use: about 1 s of a `vae-train`
process that never compiles anything (`python -X importtime`; docs/vae-train.md). This class
makes the very calls `torch.optim.Adam(fused=True)` makes (`_foreach_add_` on the step counts,
then `torch._fused_adam_`), so its updates are bit for bit torch's (tests/train/test_round2.py
checks it step for step), and its `state_dict` has torch's layout, so checkpoints written before
load here and the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8}
# The group entries torch.optim.Adam writes; ours must hold these values to be loaded here.
_FIXED = {
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


class Adam:
    """Adam (Kingma and Ba) with torch's defaults: betas (0.9, 0.999), eps 1e-8, no weight
    decay; one parameter group. `zero_grad`, `step`, `state_dict`, `load_state_dict` behave as
    torch.optim.Adam's do (the state of a parameter appears at its first step)."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.betas: tuple[float, float] = DEFAULTS["betas"]  # type: ignore[assignment]
        self.eps = float(DEFAULTS["eps"])  # type: ignore[arg-type]
        # per parameter index: {"step": float32 scalar, "exp_avg": ..., "exp_avg_sq": ...}
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        for i, p in live:
            if i not in self.state:
                self.state[i] = {
                    "step": torch.zeros((), dtype=torch.float32, device=p.device),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }
        states = [self.state[i] for i, _ in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            [p for _, p in live],
            [p.grad for _, p in live],  # type: ignore[misc]
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Adam's layout (the tensors themselves, not copies, as torch does)."""
        group: dict[str, Any] = {"lr": self.lr, "betas": self.betas, "eps": self.eps, **_FIXED}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: Any) -> None:
        """Take the state `state_dict` holds (ours or torch.optim.Adam's, fused or not), after
        checking all of it: ValueError names the first thing that is not Adam's state for these
        parameters (and nothing is changed then)."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("not an Adam state dict (keys 'state' and 'param_groups')")
        groups = state_dict["param_groups"]
        if not isinstance(groups, list) or len(groups) != 1 or not isinstance(groups[0], dict):
            raise ValueError("Adam's state must have one parameter group")
        group = groups[0]
        if group.get("params") != list(range(len(self.params))):
            raise ValueError(f"Adam's group does not list the model's {len(self.params)} tensors")
        lr, eps, betas = group.get("lr"), group.get("eps"), group.get("betas")
        if not (_finite(lr) and _finite(eps)) or lr <= 0 or eps <= 0:  # type: ignore[operator]
            raise ValueError(f"Adam's lr {lr!r} or eps {eps!r} is not a positive number")
        if (
            not isinstance(betas, tuple | list)
            or len(betas) != 2
            or not all(_finite(b) and 0 <= b < 1 for b in betas)
        ):
            raise ValueError(f"Adam's betas {betas!r} are not two numbers in [0, 1)")
        for key in ("weight_decay", "amsgrad", "maximize"):
            if group.get(key, _FIXED[key]) != _FIXED[key]:
                raise ValueError(f"Adam's {key} is {group[key]!r}; vae-train uses {_FIXED[key]!r}")
        raw = state_dict["state"]
        if not isinstance(raw, dict):
            raise ValueError("Adam's 'state' is not a dict")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for i, entry in raw.items():
            if not isinstance(i, int) or not 0 <= i < len(self.params):
                raise ValueError(f"Adam's state names parameter {i!r}")
            if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
                raise ValueError(f"Adam's state of parameter {i} lacks step or moments")
            p = self.params[i]
            step = entry["step"]
            step_value = (
                float(step) if isinstance(step, torch.Tensor) and step.numel() == 1 else -1.0
            )
            if not (math.isfinite(step_value) and step_value >= 1 and step_value.is_integer()):
                raise ValueError(f"Adam's step count of parameter {i} is {step!r}")
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                t = entry[key]
                if not isinstance(t, torch.Tensor) or t.shape != p.shape or t.dtype != p.dtype:
                    what = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(f"Adam's {key} of parameter {i} is {what}")
                if not bool(torch.isfinite(t).all()) or (
                    key == "exp_avg_sq" and bool(t.lt(0).any())
                ):
                    raise ValueError(f"Adam's {key} of parameter {i} holds impossible values")
                moments[key] = t.detach().to(p.device, copy=True)
            state[i] = {
                "step": torch.tensor(step_value, dtype=torch.float32, device=p.device),
                **moments,
            }
        self.lr, self.eps = float(lr), float(eps)  # type: ignore[arg-type]
        self.betas = (float(betas[0]), float(betas[1]))
        self.state = state


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
