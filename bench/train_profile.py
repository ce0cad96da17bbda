"""Profile: where one vae-train step's time goes at fp32 and bf16 (torch.profiler), by kind of work.

    python bench/train_profile.py                 (synthetic MNIST-shaped data)
    VAE_DATA_DIR=/path/to/mnist python bench/train_profile.py --batches 200

Runs vae-train's own epoch loop (`training._Run._train_epoch`, batch 128, the seed model
784-400-20) over `--batches` batches under `torch.profiler`: fp32 and bf16 (autocast), taking
turns `--rounds` times, each keeping its median pass. It prints
each kind of work's share of the CPU self time: matmuls (mm, addmm), element-wise work, the
loss, Adam, the gather, the casts (copy_/to). It then times the step's 14 matmuls in fp32 and
bf16 in isolation (alternating) and works out the ceiling Amdahl's law allows bf16 matmuls:
1 / ((1 - m) + m / s), m the matmul share of the fp32 step and s the bf16 matmul speed-up.
Last, training passes in alternating pairs (bench/measure.py): bf16 against fp32.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from measure import alternate_samples
from torch.profiler import ProfilerActivity, profile

from vae_train import training
from vae_train.data import MnistImages, load_mnist
from vae_train.device import Progress, flush_denormals
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


def breakdown(data: MnistImages, variant: str) -> tuple[dict[str, float], float]:
    """Self CPU time (s) of each kind of work over one pass of `data`, and the wall time;
    `variant` is fp32 or bf16."""
    run = _make_run(data, variant)
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


def _make_run(data: MnistImages, precision: str) -> training._Run:
    settings = TrainSettings(epochs=10_000, device="cpu", compute_dtype=precision)
    return training._Run(settings, VAEConfig(), torch.device("cpu"), data)


def _epoch_sampler(data: MnistImages, precision: str) -> Any:
    """One more training pass of a run per call; returns its seconds."""
    run = _make_run(data, precision)
    quiet, path = Progress(enabled=False), Path("model.pt")

    def sample() -> float:
        start = time.perf_counter()
        run.epoch += 1
        with flush_denormals():
            run._train_epoch(run.epoch, quiet, path)
        return time.perf_counter() - start

    return sample


def compare(data: MnistImages, pairs: int) -> None:
    """Training passes, bf16 against fp32, in alternating pairs (bench/measure.py)."""
    result = alternate_samples(
        _epoch_sampler(data, "bf16"), _epoch_sampler(data, "fp32"), pairs=pairs
    )
    print(f"\ntraining pass, batch 128: bf16 is {result.ratio.show(2, 'x')} fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--batches", type=int, default=100, help="batches per profiled pass")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs of the ratios")
    parser.add_argument("--rounds", type=int, default=3, help="profiled passes of each variant")
    parser.add_argument(
        "--quick", action="store_true", help="a check in seconds: 20 batches, 1 round, 5 pairs"
    )
    args = parser.parse_args()
    if args.quick:
        args.batches, args.rounds, args.pairs = 20, 1, 5
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
    variants = ("fp32", "bf16")
    print("\n| work (ms per step, share) | fp32 | bf16 (autocast) |")
    print("| --- | ---: | ---: |")
    # The machine's load drifts: the variants take turns, and each keeps its median pass.
    passes: dict[str, list[tuple[dict[str, float], float]]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            passes[v].append(breakdown(data, v))
    results = {
        v: sorted(p, key=lambda r: sum(r[0].values()))[len(p) // 2] for v, p in passes.items()
    }
    totals = {v: sum(k.values()) for v, (k, _) in results.items()}
    for kind in ORDER:
        row = []
        for v in variants:
            seconds = results[v][0].get(kind, 0.0)
            row.append(f"{seconds / args.batches * 1e3:.3f} ({seconds / totals[v]:.0%})")
            shares[v, kind] = seconds / totals[v]
        print(f"| {kind} | " + " | ".join(row) + " |")
    walls = {v: results[v][1] / args.batches * 1e3 for v in variants}
    print(
        "| total (profiled self time) | "
        + " | ".join(f"{totals[v] / args.batches * 1e3:.3f}" for v in variants)
        + " |"
    )
    print("| wall, under the profiler | " + " | ".join(f"{walls[v]:.3f}" for v in variants) + " |")
    fp32, bf16, s = matmul_speedup(args.batch_size)
    m = shares["fp32", "matmul"]
    ceiling = 1 / ((1 - m) + m / s)
    print(
        f"\nthe step's 14 matmuls alone: fp32 {fp32 * 1e3:.3f} ms, bf16 {bf16 * 1e3:.3f} ms "
        f"({s:.2f}x); matmul share of the fp32 step {m:.0%}; ceiling 1 / ((1 - {m:.2f}) + "
        f"{m:.2f} / {s:.2f}) = {ceiling:.2f}x; under the profiler (not a "
        f"measurement) bf16 was {walls['fp32'] / walls['bf16']:.2f}x fp32"
    )

    compare(data, args.pairs)


if __name__ == "__main__":
    main()
