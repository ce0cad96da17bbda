"""The training step behind graphs.capture_step: the fallback decision, the static-shape guard,
the partial batch, the undone warm-up, and eager against captured steps (on CUDA where there is
one; on the CPU the same code path in its eager form)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from vae_runtime.errors import InvalidArgumentError
from vae_train.adam import Adam
from vae_train.data import MnistImages
from vae_train.device import require_compute_dtype
from vae_train.graphs import TrainStep, capture_step, check_static, graph_missing, preserved
from vae_train.model import VAE, VAEConfig, loss_terms
from vae_train.training import TrainSettings, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
BATCH, LATENT = 16, 3


def _setup(device: str, seed: int = 0) -> tuple[VAE, Adam, Callable[..., tuple]]:
    torch.manual_seed(seed)
    model = VAE(VAEConfig(hidden_dim=24, latent_dim=LATENT)).to(device)
    optimizer = Adam(model.parameters(), lr=1e-2)

    def loss_fn(images: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().div_(255.0)
        return loss_terms(*_reorder(model(x, eps), x))

    return model, optimizer, loss_fn


def _reorder(out: tuple[torch.Tensor, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits, mu, logvar = out
    return logits, x, mu, logvar


def _batches(device: str, n: int = 3 * BATCH + 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 784), generator=gen, dtype=torch.uint8)
    return images.to(device), torch.randn(n, LATENT, generator=gen).to(device)


def _plain_run(device: str) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The step written out, as the loop did before capture_step: the reference."""
    model, optimizer, loss_fn = _setup(device)
    images, eps = _batches(device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, images.shape[0], BATCH):
        bce, kl = loss_fn(images[start : start + BATCH], eps[start : start + BATCH])
        optimizer.zero_grad()
        (bce + kl).backward()
        optimizer.step()
        sums[0] += bce.detach()
        sums[1] += kl.detach()
    return [p.detach().clone() for p in model.parameters()], sums


def _stepped_run(device: str, fake_graph: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    model, optimizer, loss_fn = _setup(device)
    images, eps = _batches(device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    step = capture_step(loss_fn, optimizer, images[:BATCH], eps[:BATCH], sums)
    if fake_graph:
        _fake_capture(step, images[:BATCH], eps[:BATCH])
    for start in range(0, images.shape[0], BATCH):
        step(images[start : start + BATCH], eps[start : start + BATCH])
    return [p.detach().clone() for p in model.parameters()], sums


class _FakeGraph:
    """Stands for a CUDA graph on the CPU: replaying runs the eager step on the static buffers,
    which is what the recorded graph does."""

    def __init__(self, step: TrainStep) -> None:
        self.step, self.replays = step, 0

    def replay(self) -> None:
        assert self.step.static_x is not None
        assert self.step.static_eps is not None
        self.replays += 1
        self.step.eager(self.step.static_x, self.step.static_eps)


def _fake_capture(step: TrainStep, x: torch.Tensor, eps: torch.Tensor) -> None:
    step.static_x, step.static_eps = x.clone(), eps.clone()
    step.graph = _FakeGraph(step)  # type: ignore[assignment]


def test_the_fallback_decision() -> None:
    assert "not cpu" in graph_missing(torch.device("cpu"))
    assert "not mps" in graph_missing(torch.device("mps"))
    cuda = torch.device("cuda")  # a device object needs no GPU
    assert graph_missing(cuda) == ""
    assert "binarize" in graph_missing(cuda, binarize=True)
    assert "bf16" in graph_missing(cuda, compute_dtype="bf16")


def test_graphs_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_CUDA_GRAPHS", "0")
    assert graph_missing(torch.device("cuda")) == "VAE_CUDA_GRAPHS=0"


def test_static_shapes_are_checked() -> None:
    static = torch.zeros(BATCH, 784, dtype=torch.uint8)
    check_static(static, torch.ones(BATCH, 784, dtype=torch.uint8))
    with pytest.raises(
        ValueError, match=r"takes \(16, 784\) torch.uint8, got \(16, 784\) torch.float32"
    ):
        check_static(static, torch.ones(BATCH, 784))
    with pytest.raises(ValueError, match=r"got \(8, 784\)"):
        check_static(static, torch.ones(8, 784, dtype=torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
def test_the_step_matches_the_plain_loop(device: str) -> None:
    """On the CPU capture_step returns the eager step: bit for bit the plain loop. On CUDA the
    step is a replayed graph: the same to float32 rounding."""
    (want, want_sums), (got, got_sums) = _plain_run(device), _stepped_run(device)
    if device == "cpu":
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
        assert torch.equal(want_sums, got_sums)
    else:
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_sums, want_sums, rtol=1e-5, atol=1e-3)


def test_full_batches_replay_and_the_partial_one_runs_eagerly() -> None:
    """Routing, with a stand-in graph: full batches go through the static buffers and replay,
    the last (5 images) runs eagerly and leaves the graph's gradient tensors in place; the
    result is the plain loop's, bit for bit."""
    want, want_sums = _plain_run("cpu")
    model, optimizer, loss_fn = _setup("cpu")
    images, eps = _batches("cpu")
    sums = torch.zeros(2, dtype=torch.float64)
    step = capture_step(loss_fn, optimizer, images[:BATCH], eps[:BATCH], sums)
    assert step.graph is None  # no graphs on the CPU
    _fake_capture(step, images[:BATCH], eps[:BATCH])
    for start in range(0, 3 * BATCH, BATCH):
        step(images[start : start + BATCH], eps[start : start + BATCH])
    static_grads = [p.grad for p in model.parameters()]
    step(images[3 * BATCH :], eps[3 * BATCH :])  # the partial batch
    assert step.graph.replays == 3  # type: ignore[attr-defined]
    assert all(p.grad is g for p, g in zip(model.parameters(), static_grads, strict=True))
    assert all(torch.equal(a, p) for a, p in zip(want, model.parameters(), strict=True))
    assert torch.equal(want_sums, sums)


def test_warm_up_steps_leave_no_trace() -> None:
    """Steps inside `preserved` (capture's warm-up) are undone in place: the run that follows is
    the one that would have run without them, bit for bit, from a fresh Adam and after steps."""
    want, want_sums = _plain_run("cpu")
    model, optimizer, loss_fn = _setup("cpu")
    images, eps = _batches("cpu")
    sums = torch.zeros(2, dtype=torch.float64)
    step = TrainStep(loss_fn, optimizer, BATCH, sums)
    weights = [p.data_ptr() for p in model.parameters()]
    with preserved(optimizer, sums):
        for _ in range(3):
            step.eager(images[:BATCH], eps[:BATCH])
    assert [p.data_ptr() for p in model.parameters()] == weights
    assert all(float(s["step"]) == 0 for s in optimizer.state.values())
    for start in range(0, images.shape[0], BATCH):
        step(images[start : start + BATCH], eps[start : start + BATCH])
    assert all(torch.equal(a, p) for a, p in zip(want, model.parameters(), strict=True))
    assert torch.equal(want_sums, sums)


@pytest.mark.parametrize("device", DEVICES)
def test_training_through_the_step_is_reproducible(
    device: str, tmp_path: Path, tiny_data: MnistImages, tiny_config: VAEConfig
) -> None:
    """vae-train's loop goes through capture_step: two runs agree (bit for bit on the CPU)."""
    settings = TrainSettings(epochs=2, batch_size=64, seed=3, device=device)
    a = train(settings, tiny_config, out_dir=tmp_path / "a", data=tiny_data)
    b = train(settings, tiny_config, out_dir=tmp_path / "b", data=tiny_data)
    assert a.metrics[-1]["test_loss"] < a.metrics[0]["test_loss"]
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k


def test_bf16_is_refused_on_cuda() -> None:
    """bf16 on a GPU: refused in one line (the step is launch-bound), never silently fp32."""
    with pytest.raises(InvalidArgumentError, match="--precision bf16 refused: on a GPU"):
        require_compute_dtype("bf16", torch.device("cuda"))
    require_compute_dtype("fp32", torch.device("cuda"))
