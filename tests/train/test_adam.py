"""Our Adam: step for step the same as torch's, refusing damaged state, and the reason it
exists: a whole vae-train run imports no torch._dynamo."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_train.adam import Adam
from vae_train.model import VAE, VAEConfig, loss_terms


def _grads(model: VAE, x: torch.Tensor, eps: torch.Tensor) -> None:
    logits, mu, logvar = model(x, eps)
    bce, kl = loss_terms(logits, x, mu, logvar)
    (bce + kl).backward()  # type: ignore[no-untyped-call]


def test_adam_matches_torch_step_for_step() -> None:
    torch.manual_seed(0)
    ours_model = VAE(VAEConfig(hidden_dim=24, latent_dim=3))
    torch_model = copy.deepcopy(ours_model)
    ours = Adam(ours_model.parameters(), lr=3e-3)
    theirs = torch.optim.Adam(torch_model.parameters(), lr=3e-3, fused=True)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.rand(16, 784, generator=gen)
        eps = torch.randn(16, 3, generator=gen)
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            opt.zero_grad()
            _grads(model, x, eps)
            opt.step()
        for a, b in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
            assert torch.equal(a, b), f"step {step}"
    mine, torch_state = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == torch_state["param_groups"]
    for i, entry in torch_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(mine["state"][i][key], value), (i, key)
    # torch's state loads into ours (checkpoints of earlier versions) and continues the same
    again = Adam(copy.deepcopy(torch_model).parameters(), lr=1.0)
    again.load_state_dict(torch_state)
    assert again.lr == 3e-3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda sd: sd.pop("state"), "not an Adam state dict"),
        (lambda sd: sd["param_groups"][0].__setitem__("params", [0]), "does not list"),
        (lambda sd: sd["param_groups"][0].__setitem__("lr", float("nan")), "lr"),
        (lambda sd: sd["param_groups"][0].__setitem__("betas", (1.5, 0.9)), "betas"),
        (lambda sd: sd["param_groups"][0].__setitem__("amsgrad", True), "amsgrad"),
        (lambda sd: sd["state"][0].__setitem__("step", torch.tensor(0.5)), "step count"),
        (lambda sd: sd["state"][0].__setitem__("exp_avg", torch.zeros(2)), "exp_avg of"),
        (
            lambda sd: sd["state"][1].__setitem__(
                "exp_avg_sq", -torch.ones_like(sd["state"][1]["exp_avg_sq"])
            ),
            "impossible",
        ),
        (lambda sd: sd["state"].__setitem__(99, {}), "parameter 99"),
    ],
)
def test_adam_refuses_damaged_state(change: Callable[[dict[str, Any]], Any], match: str) -> None:
    model = VAE(VAEConfig(hidden_dim=8, latent_dim=2))
    opt = Adam(model.parameters(), lr=1e-3)
    _grads(model, torch.rand(4, 784), torch.randn(4, 2))
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    change(sd)
    fresh = Adam(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)
    assert fresh.state == {}  # nothing taken


def test_training_never_imports_dynamo(tmp_path: Path, mnist_dir: Path) -> None:
    """The reason for our Adam: a whole vae-train run imports no torch._dynamo (~1 s)."""
    import subprocess
    import sys

    args = ["--epochs", "1", "--hidden-dim", "8", "--latent-dim", "2", "--device", "cpu"]
    args += ["--data-dir", str(mnist_dir), "--out", str(tmp_path), "-q"]
    script = (
        "import sys\n"
        "from vae_train.cli import app\n"
        "from typer.testing import CliRunner\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
