"""The training step behind one function: replayed from a CUDA graph on a GPU, eager elsewhere.

At batch 128 a step of this small model is launch-bound on a GPU: a few dozen kernels of
microseconds each, issued one by one from Python. `capture_step` records the whole step
(forward, loss, backward, Adam, the running sums) once into a `torch.cuda.CUDAGraph` with static
input buffers, and each batch then copies its images and noise into those buffers and replays
the graph: one launch, no host synchronisation. Where graphs are not available (the CPU, mps,
`VAE_CUDA_GRAPHS=0`, --binarize, whose noise is drawn on the host per batch) the very same step
runs eagerly. The last, partial batch of an epoch (a shape the graph was not recorded for) runs
eagerly too, on the same weights and Adam state: padding it and masking the padded rows out of
the loss would need a mask in the graph and the loss divided by a changing count, for one batch
in 469.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from .adam import Adam

# (uint8 images (B, 784), noise (B, latent_dim)) -> summed BCE and KL of the batch
LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuBLAS, autograd, Adam state)


def graph_missing(device: torch.device, binarize: bool = False, compute_dtype: str = "fp32") -> str:
    """Why the step is not captured on `device` ("" when it is): the fallback decision."""
    if device.type != "cuda":
        return f"CUDA graphs exist only on cuda devices, not {device.type}"
    if os.environ.get("VAE_CUDA_GRAPHS", "1") == "0":
        return "VAE_CUDA_GRAPHS=0"
    if binarize:
        return "--binarize draws each batch's pixels on the host"
    if compute_dtype != "fp32":
        return f"{compute_dtype} runs eagerly"
    return ""


class TrainStep:
    """One optimisation step at a fixed batch size; call it with a batch's uint8 images and its
    noise. The summed losses accumulate on the device in `sums` (BCE, KL), read by the caller a
    few times per epoch at most. `graph` is None when the step runs eagerly."""

    def __init__(
        self,
        loss_fn: LossFn,
        optimizer: Adam,
        batch_size: int,
        sums: torch.Tensor,
    ) -> None:
        self.loss_fn, self.optimizer, self.batch_size = loss_fn, optimizer, batch_size
        self.sums = sums  # (2,) float64 (float32 on mps), on the device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_x: torch.Tensor | None = None
        self.static_eps: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, eps: torch.Tensor) -> None:
        if self.graph is not None and x.shape[0] == self.batch_size:
            assert self.static_x is not None
            assert self.static_eps is not None
            check_static(self.static_x, x)
            check_static(self.static_eps, eps)
            self.static_x.copy_(x, non_blocking=True)
            self.static_eps.copy_(eps, non_blocking=True)
            self.graph.replay()
        elif self.graph is not None:  # the partial batch: eager, the graph's gradients kept
            grads = [p.grad for p in self.optimizer.params]
            self.eager(x, eps)
            for p, g in zip(self.optimizer.params, grads, strict=True):
                p.grad = g
        else:
            self.eager(x, eps)

    def eager(self, x: torch.Tensor, eps: torch.Tensor) -> None:
        """The step as plain autograd and Adam (what the graph records)."""
        bce, kl = self.loss_fn(x, eps)
        self.optimizer.zero_grad()
        (bce + kl).backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.sums[0] += bce.detach()
        self.sums[1] += kl.detach()


@contextmanager
def preserved(optimizer: Adam, sums: torch.Tensor) -> Iterator[None]:
    """Steps taken inside (capture's warm-up) leave no trace: the weights, Adam's state (a
    moment made inside is zeroed, with its step count: what a first step makes afresh) and
    `sums` are put back in place, in the same tensors (a recorded graph keeps their addresses)."""
    params = optimizer.params
    saved = [p.detach().clone() for p in params]
    saved_state = {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state.items()}
    saved_sums = sums.clone()
    yield
    with torch.no_grad():
        for p, value in zip(params, saved, strict=True):
            p.copy_(value)
        for i, state in optimizer.state.items():
            for k, v in state.items():
                if i in saved_state:
                    v.copy_(saved_state[i][k])
                else:
                    v.zero_()
        sums.copy_(saved_sums)


def check_static(static: torch.Tensor, given: torch.Tensor) -> None:
    """A replayed graph reads its buffers' memory: the batch must have their shape and dtype."""
    if given.shape != static.shape or given.dtype != static.dtype:
        raise ValueError(
            f"a captured step takes {tuple(static.shape)} {static.dtype}, got "
            f"{tuple(given.shape)} {given.dtype}"
        )


def capture_step(
    loss_fn: LossFn,
    optimizer: Adam,
    x: torch.Tensor,
    eps: torch.Tensor,
    sums: torch.Tensor,
    *,
    binarize: bool = False,
    compute_dtype: str = "fp32",
) -> TrainStep:
    """The training step for batches shaped as `x` (uint8 (B, 784)) and `eps` (B, latent_dim):
    recorded into a CUDA graph when `graph_missing` allows it, else eager. Recording leaves the
    weights, Adam's state and `sums` as they were (its warm-up steps are undone)."""
    step = TrainStep(loss_fn, optimizer, x.shape[0], sums)
    if graph_missing(x.device, binarize, compute_dtype):
        return step
    step.static_x, step.static_eps = x.clone(), eps.clone()
    with preserved(optimizer, sums):
        side = torch.cuda.Stream(x.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step.eager(step.static_x, step.static_eps)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad()
        with torch.cuda.graph(graph):
            step.eager(step.static_x, step.static_eps)
    step.graph = graph
    return step
