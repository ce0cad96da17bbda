"""Profile: where one vae-train step's time goes at fp32 and bf16 (torch.profiler), by kind of work.

    python bench/train_profile.py                 (synthetic MNIST-shaped data)
    VAE_DATA_DIR=/path/to/mnist python bench/train_profile.py --batches 200

Runs vae-train's own epoch loop (`training._Run._train_epoch`, batch 128, the seed model
784-400-20) over `--batches` batches under `torch.profiler`, once per precision, and prints each
kind of work's share of the CPU self time: matmuls (mm, addmm), element-wise work, the loss,
Adam, the gather, the casts (copy_/to). It then times a batch-128 matmul of each shape the step
uses in fp32 and bf16 in isolation, and works out the ceiling Amdahl's law allows bf16 matmuls:
1 / ((1 - m) + m / s), m the matmul share of the fp32 step and s the bf16 matmul speed-up.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from vae_train import training
from vae_train.data import MnistImages, load_mnist
from vae_train.device import Progress
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings

# op name -> kind; anything else is "other" (printed by name with --verbose)
KINDS = {
    "aten::mm": "matmul",
    "aten::addmm": "matmul",
    "aten::linear": "matmul",
    "aten::_fused_adam_": "adam",
    "aten::_foreach_add_": "adam",
    "aten::index_select": "gather",
    "aten::copy_": "cast",
    "aten::to": "cast",
    "aten::_to_copy": "cast",
    "aten::softplus": "loss",
    "aten::softplus_backward": "loss",
    "aten::dot": "loss",
    "aten::sum": "loss",
    "aten::exp": "elementwise",
    "aten::mul": "elementwise",
    "aten::add": "elementwise",
    "aten::add_": "elementwise",
    "aten::sub": "elementwise",
    "aten::rsub": "elementwise",
    "aten::pow": "elementwise",
    "aten::pow_backward": "elementwise",
    "aten::relu": "elementwise",
    "aten::threshold_backward": "elementwise",
    "aten::div_": "elementwise",
    "aten::mul_": "elementwise",
    "aten::fill_": "elementwise",
    "aten::expand": "elementwise",
    "aten::exp_backward": "elementwise",
}
ORDER = ("matmul", "elementwise", "loss", "adam", "gather", "cast", "other")


def synthetic(n_train: int, n_test: int = 1000, seed: int = 0) -> MnistImages:
    """uint8 images of MNIST's shape, a quarter of the pixels lit (MNIST is ~19% non-zero)."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> np.ndarray:
        lit = rng.random((n, 28, 28)) < 0.25
        return (lit * rng.integers(0, 256, (n, 28, 28))).astype(np.uint8)

    return MnistImages(make(n_train), make(n_test), "synthetic")


def breakdown(data: MnistImages, precision: str, batch: int) -> tuple[dict[str, float], float]:
    """Self CPU time (s) of each kind of work over one pass of `data`, and the wall time."""
    run = training._Run(
        TrainSettings(epochs=2, batch_size=batch, device="cpu", compute_dtype=precision),
        VAEConfig(),
        torch.device("cpu"),
        data,
    )
    quiet = Progress(enabled=False)
    run._train_epoch(1, quiet, Path("model.pt"))  # warm-up: oneDNN's kernels, the allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run._train_epoch(2, quiet, Path("model.pt"))
        wall = time.perf_counter() - start
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::") or event.key.startswith("autograd::"):
            kinds[KINDS.get(event.key, "other")] += event.self_cpu_time_total / 1e6
    return dict(kinds), wall


def matmul_speedup(batch: int, rounds: int = 50, tries: int = 7) -> tuple[float, float, float]:
    """The matmuls of one step in isolation (forward x W^T for the five layers, backward g W
    for four and g^T x for five), fp32 and bf16 alternating `tries` times: median seconds of
    each, and the median of the pairs' ratios."""
    layers = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]
    seconds: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
    for _ in range(tries):
        for dtype in seconds:
            xs = [torch.rand(batch, k, dtype=dtype) for k, _ in layers]
            ws = [torch.rand(n, k, dtype=dtype) for k, n in layers]
            gs = [torch.rand(batch, n, dtype=dtype) for _, n in layers]
            start = time.perf_counter()
            for _ in range(rounds):
                for i, (x, w, g) in enumerate(zip(xs, ws, gs, strict=True)):
                    torch.mm(x, w.t())
                    torch.mm(g.t(), x)
                    if i:
                        torch.mm(g, w)
            seconds[dtype].append((time.perf_counter() - start) / rounds)
    ratios = [a / b for a, b in zip(seconds[torch.float32], seconds[torch.bfloat16], strict=True)]
    return (
        float(np.median(seconds[torch.float32])),
        float(np.median(seconds[torch.bfloat16])),
        float(np.median(ratios)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--batches", type=int, default=100, help="batches per profiled pass")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    n = args.batches * args.batch_size
    if args.data_dir:
        full = load_mnist(args.data_dir)
        data = MnistImages(full.train[:n], full.test[:1000], full.source)
    else:
        data = synthetic(n)
    print(
        f"{n} images ({data.source}), batch {args.batch_size}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    shares = {}
    print("\n| work | fp32 (ms/step) | fp32 share | bf16 (ms/step) | bf16 share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    results = {p: breakdown(data, p, args.batch_size) for p in ("fp32", "bf16")}
    totals = {p: sum(k.values()) for p, (k, _) in results.items()}
    for kind in ORDER:
        row = []
        for p in ("fp32", "bf16"):
            seconds = results[p][0].get(kind, 0.0)
            row += [f"{seconds / args.batches * 1e3:.3f}", f"{seconds / totals[p]:.0%}"]
            shares[p, kind] = seconds / totals[p]
        print(f"| {kind} | " + " | ".join(row) + " |")
    walls = {p: results[p][1] / args.batches * 1e3 for p in ("fp32", "bf16")}
    print(
        f"| total (profiled self time) | {totals['fp32'] / args.batches * 1e3:.3f} | | "
        f"{totals['bf16'] / args.batches * 1e3:.3f} | |"
    )
    print(f"| wall, under the profiler | {walls['fp32']:.3f} | | {walls['bf16']:.3f} | |")
    fp32, bf16, s = matmul_speedup(args.batch_size)
    m = shares["fp32", "matmul"]
    ceiling = 1 / ((1 - m) + m / s)
    print(
        f"\nthe step's 14 matmuls alone: fp32 {fp32 * 1e3:.3f} ms, bf16 {bf16 * 1e3:.3f} ms "
        f"({s:.2f}x); matmul share of the fp32 step {m:.0%}; ceiling 1 / ((1 - {m:.2f}) + "
        f"{m:.2f} / {s:.2f}) = {ceiling:.2f}x; measured under the profiler "
        f"{walls['fp32'] / walls['bf16']:.2f}x"
    )


if __name__ == "__main__":
    main()
