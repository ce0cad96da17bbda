"""Profile: where one vae-train step's time goes (torch.profiler), by kind of work.

    python bench/train_profile.py                 (synthetic MNIST-shaped data)
    VAE_DATA_DIR=/path/to/mnist python bench/train_profile.py --batches 122

Runs vae-train's own epoch loop (`training._Run._train_epoch`, batch 128, the seed model
784-400-20) over `--batches` batches (fewer where the data holds fewer images: per-step figures
divide by the steps a pass took, which the first line prints) under `torch.profiler`, in three
variants taking turns `--rounds` times, each keeping its median pass: float32 through torch's
BLAS (MKL; `VAE_ONEDNN=0`), float32 as vae-train runs it (OneDnnLinear for the large layers),
and bf16 (autocast), each under `flush_denormals` as vae-train's epochs run. It prints each kind
of work's share of the CPU self time: matmuls (mm, addmm, oneDNN's linear), element-wise work,
the loss, Adam, the gather, the casts (copy_/to). It then times the step's 14 matmuls of each
variant in isolation and works out the ceiling Amdahl's law allows faster matmuls alone:
1 / ((1 - m) + m / s), m the matmul share of the slower step and s the matmul speed-up. Last,
training passes in alternating pairs (bench/measure.py): fp32 against fp32 through MKL, and
bf16 against fp32.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
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
    "mkldnn::_linear_pointwise": "matmul",
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
    with flush_denormals():  # as vae-train runs its epochs
        run._train_epoch(1, quiet, Path("model.pt"))  # warm-up: oneDNN's kernels, the allocator
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run._train_epoch(2, quiet, Path("model.pt"))
            wall = time.perf_counter() - start
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "autograd::", "mkldnn::")):
            kinds[KINDS.get(event.key, "other")] += event.self_cpu_time_total / 1e6
    return dict(kinds), wall


def _mm(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """a @ b the way `kind` computes it: torch.mm (MKL in float32, oneDNN in bf16), or
    oneDNN's float32 linear as OneDnnLinear calls it (a @ b = linear(a, b.T))."""
    if kind != "fp32":
        return torch.mm
    return lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b.t(), None, "none", [], "")


def matmul_speedup(batch: int, rounds: int = 50, tries: int = 7) -> dict[str, float]:
    """The matmuls of one step in isolation (forward x W^T for the five layers, backward g W
    for four and g^T x for five), each variant in turn, `tries` times: median seconds of each."""
    layers = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(tries):
        for variant in VARIANTS:
            dtype = torch.bfloat16 if variant == "bf16" else torch.float32
            big = variant == "fp32"  # OneDnnLinear where linear_layer puts it, MKL elsewhere
            xs = [torch.rand(batch, k, dtype=dtype) for k, _ in layers]
            ws = [torch.rand(n, k, dtype=dtype) for k, n in layers]
            gs = [torch.rand(batch, n, dtype=dtype) for _, n in layers]
            mms = [_mm(variant if big and min(k, n) >= 64 else "mm") for k, n in layers]
            start = time.perf_counter()
            for _ in range(rounds):
                for i, (x, w, g, mm) in enumerate(zip(xs, ws, gs, mms, strict=True)):
                    mm(x, w.t())
                    mm(g.t(), x)
                    if i:
                        mm(g, w)
            seconds[variant].append((time.perf_counter() - start) / rounds)
    return {v: float(np.median(s)) for v, s in seconds.items()}


# fp32-mkl: float32 through torch's BLAS (VAE_ONEDNN=0); fp32: the default, OneDnnLinear
VARIANTS = ("fp32-mkl", "fp32", "bf16")


def _make_run(data: MnistImages, variant: str) -> training._Run:
    settings = TrainSettings(
        epochs=10_000, device="cpu", compute_dtype="bf16" if variant == "bf16" else "fp32"
    )
    saved = os.environ.get("VAE_ONEDNN")
    os.environ["VAE_ONEDNN"] = "0" if variant == "fp32-mkl" else "1"
    try:  # the layers are chosen when the run builds its model
        return training._Run(settings, VAEConfig(), torch.device("cpu"), data)
    finally:
        if saved is None:
            del os.environ["VAE_ONEDNN"]
        else:
            os.environ["VAE_ONEDNN"] = saved


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
    """Training passes in alternating pairs (bench/measure.py): fp32 (oneDNN) against fp32
    through MKL, and bf16 against fp32."""
    for a, b in (("fp32", "fp32-mkl"), ("bf16", "fp32")):
        result = alternate_samples(_epoch_sampler(data, a), _epoch_sampler(data, b), pairs=pairs)
        print(f"training pass, batch 128: {a} is {result.ratio.show(2, 'x')} {b}")


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
    # The divisor of every per-step figure: the steps a pass really takes, which are fewer than
    # --batches when the data holds fewer images (15,604 in the real subset: 122 steps).
    steps = math.ceil(len(data.train) / args.batch_size)
    print(
        f"{len(data.train)} images ({data.source}), batch {args.batch_size}: {steps} steps a "
        f"pass, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    if steps < args.batches:
        print(f"(--batches {args.batches} asked for more images than the data has)")
    shares = {}
    variants = VARIANTS
    print("\n| work (ms per step, share) | fp32, MKL (VAE_ONEDNN=0) | fp32 | bf16 (autocast) |")
    print("| --- | ---: | ---: | ---: |")
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
            row.append(f"{seconds / steps * 1e3:.3f} ({seconds / totals[v]:.0%})")
            shares[v, kind] = seconds / totals[v]
        print(f"| {kind} | " + " | ".join(row) + " |")
    walls = {v: results[v][1] / steps * 1e3 for v in variants}
    print(
        "| total (profiled self time) | "
        + " | ".join(f"{totals[v] / steps * 1e3:.3f}" for v in variants)
        + " |"
    )
    print("| wall, under the profiler | " + " | ".join(f"{walls[v]:.3f}" for v in variants) + " |")
    mm = matmul_speedup(args.batch_size)
    print(
        "\nthe step's 14 matmuls alone: "
        + ", ".join(f"{v} {mm[v] * 1e3:.3f} ms" for v in variants)
        + " (medians of 7 turns)"
    )
    for fast, slow in (("fp32", "fp32-mkl"), ("bf16", "fp32")):
        m, s = shares[slow, "matmul"], mm[slow] / mm[fast]
        ceiling = 1 / ((1 - m) + m / s)
        print(
            f"{fast} against {slow}: matmuls {s:.2f}x, {m:.0%} of the {slow} step; ceiling "
            f"1 / ((1 - {m:.2f}) + {m:.2f} / {s:.2f}) = {ceiling:.2f}x; under the profiler (not "
            f"a measurement) {walls[slow] / walls[fast]:.2f}x"
        )
    print()

    compare(data, args.pairs)


if __name__ == "__main__":
    main()
