"""Benchmark: vae-train's loop against the common per-image Dataset/DataLoader way, same data,
and against the hand-written backward pass it used before, in the same run; whole
processes (`vae-train` against bench/reference_vae.py, 5 and 10 epochs); where a 5-epoch
process's seconds go (bench/train_probe.py: start-up, data, each epoch's parts, files, exit);
fp32 against bf16.

    python bench/train_speed.py --data-dir /path/to/mnist      (or VAE_DATA_DIR=...)
    python bench/train_speed.py --quick                        (a check, in about a minute)

Every ratio is bench/measure.py's: the median of at least 5 alternating pairs (--pairs), with
its spread; the machine block comes first.

All train the same model with the same loss and optimizer (Adam, lr 1e-3) for the same epochs
on the same images; the table gives seconds per epoch (training pass + test evaluation), their
ratios, the final test loss, and the floor the arithmetic sets: the epoch's FLOPs (the six
matmuls forward, their gradients backward, and the test set's forward) over the matmul rate
measured here: on a large GEMM (the peak) and on the GEMM shapes a batch-128 step is made of.

"hand-written backward" is vae-train's own loop with autograd swapped for the gradient written
out by hand (`loss_and_grads` below, deleted from the package): it may come back only if it is
at least 15% faster per epoch here. The three run in turn, `--pairs` times, the order flipping.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vae_train.cli import tune_threads

tune_threads(True)  # vae-train's default, before torch loads; every contender runs under it

import numpy as np  # noqa: E402
import torch  # noqa: E402
from measure import (  # noqa: E402
    alternate,
    alternate_samples,
    every_cpu,
    print_machine,
    run_process,
    spread,
    verdict,
)
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from vae_train import training  # noqa: E402
from vae_train.data import MnistImages, load_mnist  # noqa: E402
from vae_train.device import Progress, flush_denormals  # noqa: E402
from vae_train.model import VAE, VAEConfig, loss_terms  # noqa: E402
from vae_train.training import TrainSettings, train  # noqa: E402


class PilMnist(Dataset):
    """The common way, as torchvision's MNIST + ToTensor do it: one image at a time, uint8 tensor
    -> PIL image -> numpy copy -> float tensor (1, 28, 28) in [0, 1], with its label."""

    def __init__(self, images: np.ndarray) -> None:
        self.data = torch.from_numpy(images.copy())  # (N, 28, 28) uint8
        self.targets = torch.zeros(len(images), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[i], int(self.targets[i])
        pic = Image.fromarray(img.numpy(), mode="L")
        t = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        t = t.view(pic.size[1], pic.size[0], 1).permute((2, 0, 1)).contiguous()
        return t.to(dtype=torch.get_default_dtype()).div(255), target


def reference(
    train_images: np.ndarray, test_images: np.ndarray, epochs: int, seed: int
) -> tuple[list[float], float]:
    """The classic PyTorch VAE example's loop; returns seconds per epoch and final test loss."""
    torch.manual_seed(seed)
    config = VAEConfig()
    model = VAE(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = DataLoader(PilMnist(train_images), batch_size=128, shuffle=True)
    test_loader = DataLoader(PilMnist(test_images), batch_size=128, shuffle=False)
    seconds, test_loss = [], float("nan")
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, _ in train_loader:
            x = x.view(-1, 784)
            eps = torch.randn(x.shape[0], config.latent_dim)
            logits, mu, logvar = model(x, eps)
            bce, kl = loss_terms(logits, x, mu, logvar)
            optimizer.zero_grad()
            (bce + kl).backward()
            optimizer.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for x, _ in test_loader:
                x = x.view(-1, 784)
                eps = torch.randn(x.shape[0], config.latent_dim)
                bce, kl = loss_terms(*_with_x(model(x, eps), x))
                total += (bce + kl).item()
        test_loss = total / len(test_images)
        seconds.append(time.perf_counter() - start)
    return seconds, test_loss


@torch.no_grad()
def loss_and_grads(
    model: VAE, x: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The deleted hand-written path: `loss_terms` of one ELBO pass, and the gradient of their
    sum written out by hand into each parameter's `.grad` (seed architecture only)."""
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
    z = torch.addcmul(mu, eps, std)
    h3 = torch.addmm(fc3.bias, z, fc3.weight.t()).clamp_min_(0)  # (B, H)
    logits = torch.addmm(fc4.bias, h3, fc4.weight.t())  # (B, 784)
    bce, kl = loss_terms(logits, x, mu, logvar)
    d_logits = torch.sigmoid(logits).sub_(x)
    _set_grads(fc4, d_logits, h3)
    d_h3 = torch.mm(d_logits, fc4.weight).mul_(h3 > 0)
    _set_grads(fc3, d_h3, z)
    d_z = torch.mm(d_h3, fc3.weight)
    d_mu = d_z + mu
    d_logvar = (d_z * eps * std).mul_(0.5).add_(0.5 * (std * std - 1))
    _set_grads(fc2_mu, d_mu, h1)
    _set_grads(fc2_logvar, d_logvar, h1)
    d_h1 = torch.addmm(torch.mm(d_mu, fc2_mu.weight), d_logvar, fc2_logvar.weight)
    _set_grads(fc1, d_h1.mul_(h1 > 0), x)
    return bce, kl


def _set_grads(layer: nn.Linear, d_out: torch.Tensor, inputs: torch.Tensor) -> None:
    layer.weight.grad = torch.mm(d_out.t(), inputs)  # (out, in)
    layer.bias.grad = d_out.sum(0)  # (out,)


def _hand_train_epoch(self: training._Run, epoch: int, progress: object, path: object) -> tuple:
    """training._Run._train_epoch with the hand-written gradient instead of autograd."""
    model, optimizer, bs = self.model.train(), self.optimizer, self.settings.batch_size
    n = self.train_images.shape[0]
    order = torch.randperm(n, generator=self.shuffle_gen)
    eps = torch.randn(n, self.config.latent_dim, generator=self.noise_gen)
    shuffled = self.train_images.index_select(0, order)
    bce_sum = torch.zeros((), dtype=torch.float64)
    kl_sum = torch.zeros((), dtype=torch.float64)
    for b, start in enumerate(range(0, n, bs)):
        x = shuffled[start : start + bs].float().div_(255.0)
        bce, kl = loss_and_grads(model, x, eps[start : start + bs])
        optimizer.step()
        bce_sum += bce
        kl_sum += kl
        if (b + 1) % 16 == 0 and not math.isfinite(float(bce_sum + kl_sum)):
            raise RuntimeError("non-finite loss")
    return float(bce_sum) / n, float(kl_sum) / n


def _vae_train(data: object, epochs: int, seed: int, hand: bool) -> tuple[list[float], float]:
    """vae-train's own loop (train()), optionally with the hand-written gradient."""
    original = training._Run._train_epoch
    if hand:
        training._Run._train_epoch = _hand_train_epoch  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as out:
            ckpt = train(
                TrainSettings(epochs=epochs, seed=seed, device="cpu"), out_dir=out, data=data
            )
    finally:
        training._Run._train_epoch = original  # type: ignore[method-assign]
    return [m["seconds"] for m in ckpt.metrics], ckpt.metrics[-1]["test_loss"]


def _with_x(out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> tuple:
    logits, mu, logvar = out
    return logits, x, mu, logvar


def _best_rate(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """Best FLOP/s of `a @ b` over repeated timings lasting about `seconds`."""
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    reps = max(1, int(2e8 // flops))  # ~0.2 GFLOP per timing
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, reps * flops / (time.perf_counter() - start))
    return best


def matmul_rate(seconds: float = 1.0) -> float:
    """FLOP/s of a large float32 GEMM (1024 x 1024 x 1024) on this machine: the peak."""
    return _best_rate(torch.randn(1024, 1024), torch.randn(1024, 1024), seconds)


def batch_matmul_rate(batch: int = 128, hidden: int = 400, seconds: float = 1.0) -> float:
    """FLOP/s of the GEMM shapes one training step is made of (a batch of 128 through the
    784x400 layers; weight gradients contract over the batch): what the arithmetic can reach."""
    shapes = [((batch, 784), (784, hidden)), ((784, batch), (batch, hidden))]
    rates = [_best_rate(torch.randn(*x), torch.randn(*y), seconds / 2) for x, y in shapes]
    return len(rates) / sum(1 / r for r in rates)  # harmonic mean: equal FLOPs of each


def epoch_flops(n_train: int, n_test: int, hidden: int = 400, latent: int = 20) -> float:
    """Matmul FLOPs of one epoch: forward (M multiply-adds per image), backward (weight grads M,
    input grads M minus fc1's, whose input needs none), and the test set's forward."""
    m = 784 * hidden + 2 * hidden * latent + latent * hidden + hidden * 784
    return 2.0 * (n_train * (3 * m - 784 * hidden) + n_test * m)


def bf16_rate(batch: int = 128, hidden: int = 400, seconds: float = 1.0) -> float:
    """As `batch_matmul_rate`, in bfloat16: the rate a bf16 step's GEMMs can reach."""
    shapes = [((batch, 784), (784, hidden)), ((784, batch), (batch, hidden))]
    rates = [
        _best_rate(torch.randn(*x).bfloat16(), torch.randn(*y).bfloat16(), seconds / 2)
        for x, y in shapes
    ]
    return len(rates) / sum(1 / r for r in rates)


def whole_process(data_dir: str, pairs: int, epochs_list: tuple[int, ...]) -> dict[int, float]:
    """`vae-train --epochs E` against `bench/reference_vae.py --epochs E`, whole processes in
    alternating pairs (measure.alternate): the ratio is the median of the pairs' ratios.
    Returns the reference's median seconds per E."""
    bench = Path(__file__).parent
    vae_train = str(Path(sys.executable).parent / "vae-train")
    print("\n| whole process | vae-train (s) | reference (s) | ratio (spread) | target |")
    print("| --- | --- | --- | --- | --- |")
    reference_s = {}
    for epochs in epochs_list:
        with tempfile.TemporaryDirectory() as out:
            ours = [vae_train, "--data-dir", data_dir, "--out", out, "-q", "-f"]
            ours += ["--epochs", str(epochs), "--device", "cpu"]
            ref = [sys.executable, str(bench / "reference_vae.py"), "--data-dir", data_dir]
            result = alternate(ours, [*ref, "--epochs", str(epochs)], pairs=pairs)
        r = result.ratio
        reference_s[epochs] = result.seconds_b.median
        print(
            f"| {epochs} epochs | {result.seconds_a.show(2)} | {result.seconds_b.show(2)} | "
            f"{r.show(2, 'x')} | >= 3x {verdict(r.median, 3.0)} |"
        )
    return reference_s


def _probe(data_dir: str, epochs: int) -> list[tuple[str, float]]:
    """One `vae-train --epochs E` process under bench/train_probe.py: its marks."""
    probe = Path(__file__).parent / "train_probe.py"
    with tempfile.TemporaryDirectory() as out:
        args = [sys.executable, str(probe), "--data-dir", data_dir, "--out", out, "-q", "-f"]
        args += ["--epochs", str(epochs), "--device", "cpu"]
        env = {**os.environ, "VAE_PROBE_T0": repr(time.time())}
        with every_cpu():
            proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"train_probe.py failed ({proc.returncode}):\n{proc.stderr}")
    return [(name, float(t)) for name, t in json.loads(proc.stdout.splitlines()[-1])["marks"]]


def _spans(marks: list[tuple[str, float]], name: str) -> list[float]:
    """The durations of each `name:start` .. `name:end` pair, in order."""
    starts = [t for n, t in marks if n == f"{name}:start"]
    ends = [t for n, t in marks if n == f"{name}:end"]
    return [end - start for start, end in zip(starts, ends, strict=True)]


def parts(data_dir: str, runs: int, epochs: int, reference_s: float | None = None) -> None:
    """Where the seconds of one `vae-train --epochs E` process go: medians over `runs` processes
    (bench/train_probe.py), beside `python -c "import torch"` (ended by os._exit, as vae-train
    ends), the floor any torch program starts from. With the reference's seconds (the whole
    section's median), the ratio a vae-train would reach if nothing but `import torch` and its
    epochs' steady cost remained: how far trimming the rest can take it."""
    if epochs < 2:
        raise ValueError(f"parts needs 2 epochs or more (a first and a later one), got {epochs}")
    floor_cmd = [sys.executable, "-c", "import os, torch; os._exit(0)"]
    rows: dict[str, list[float]] = {}
    floors = []
    for _ in range(runs):
        floors.append(run_process(floor_cmd).seconds)
        marks = _probe(data_dir, epochs)
        at = dict(marks)
        (data,), trains, evals, files = (
            _spans(marks, n) for n in ("data", "epoch", "eval", "files")
        )
        values = {
            "start-up: the interpreter and its imports (torch, typer, the training code)": at[
                "imports"
            ],
            "reading the IDX files": data,
            "epoch 1: training pass": trains[0],
            "epoch 1: test evaluation": evals[0],
            "a later epoch: training pass (median)": float(np.median(trains[1:])),
            "a later epoch: test evaluation (median)": float(np.median(evals[1:])),
            "each epoch's set of files (median)": float(np.median(files)),
        }
        accounted = at["imports"] + data + sum(trains + evals + files)
        values["the rest: checks, model set-up, samples, exit"] = at["exit"] - accounted
        values["the whole process"] = at["exit"]
        for key, value in values.items():
            rows.setdefault(key, []).append(value)
    print(
        f"\n| one `vae-train --epochs {epochs}` process, {runs} runs | seconds (median, min-max) |"
    )
    print("| --- | --- |")
    for key, values in rows.items():
        s = spread(values)
        print(f"| {key} | {s.median:.3f} ({s.low:.3f}-{s.high:.3f}) |")
    floor = spread(floors)
    print(
        f'| `python -c "import torch"` alone, for comparison | {floor.median:.3f} '
        f"({floor.low:.3f}-{floor.high:.3f}) |"
    )
    med = {k: float(np.median(v)) for k, v in rows.items()}
    epoch_s = (
        med["a later epoch: training pass (median)"]
        + med["a later epoch: test evaluation (median)"]
    )
    warmup = med["epoch 1: training pass"] + med["epoch 1: test evaluation"] - epoch_s
    outside = med["the whole process"] - epochs * epoch_s - floor.median
    print(
        f"steady epoch (training + evaluation): {epoch_s:.3f} s; epoch 1's warm-up: "
        f"{warmup:+.3f} s; beyond `import torch` and {epochs} steady epochs: {outside:.3f} s"
    )
    if reference_s is not None:
        best = reference_s / (floor.median + epochs * epoch_s)
        print(
            f"with nothing but `import torch` and {epochs} steady epochs, vae-train would be "
            f"{best:.2f}x the reference's {reference_s:.2f} s (target 3x)"
        )


def _epochs_of(data: MnistImages, precision: str, seed: int = 1) -> Callable[[], float]:
    """A run that trains one more epoch (training pass and test evaluation) per call; returns
    the call's seconds."""
    settings = TrainSettings(epochs=10_000, seed=seed, device="cpu", compute_dtype=precision)
    run = training._Run(settings, VAEConfig(), torch.device("cpu"), data)
    quiet, path = Progress(enabled=False), Path("model.pt")

    def sample() -> float:
        start = time.perf_counter()
        run.epoch += 1
        with flush_denormals():
            run._train_epoch(run.epoch, quiet, path)
            run._evaluate(run.epoch)
        return time.perf_counter() - start

    return sample


def precisions(data: MnistImages, epochs: int, seeds: int, pairs: int) -> None:
    """fp32 against bf16: seconds per epoch, epochs alternating pair by pair (measure), after one
    warm-up epoch each; then the test loss after `epochs` epochs, mean over `seeds` seeds."""
    result = alternate_samples(_epochs_of(data, "bf16"), _epochs_of(data, "fp32"), pairs=pairs)
    r = result.ratio
    print("\n| batch 128 | s / epoch (spread) |")
    print("| --- | --- |")
    print(f"| fp32 | {result.seconds_b.show(3)} |")
    print(f"| bf16 | {result.seconds_a.show(3)} |")
    print(f"bf16 is {r.show(2, 'x')} fp32 per epoch; target >= 1.4x: {verdict(r.median, 1.4)}")
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for seed in range(1, seeds + 1):
        for p in losses:
            with tempfile.TemporaryDirectory() as out:
                settings = TrainSettings(epochs=epochs, seed=seed, device="cpu", compute_dtype=p)
                losses[p].append(train(settings, out_dir=out, data=data).metrics[-1]["test_loss"])
    gap = float(np.mean(losses["bf16"]) - np.mean(losses["fp32"]))
    shown = {p: ", ".join(f"{x:.2f}" for x in v) for p, v in losses.items()}
    print(
        f"test loss after {epochs} epochs, mean of {seeds} seeds: fp32 "
        f"{np.mean(losses['fp32']):.2f} ({shown['fp32']}), bf16 {np.mean(losses['bf16']):.2f} "
        f"({shown['bf16']}): {gap:+.2f} nats; target within 0.5: {verdict(-abs(gap), -0.5)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs (at least 5)")
    parser.add_argument(
        "--sections",
        default="epoch,whole,parts,precision",
        help="comma-separated: epoch (per-epoch table, hand-written backward), whole (whole "
        "processes, 5 and 10 epochs), parts (where a 5-epoch process's seconds go), precision "
        "(fp32 against bf16, 3 seeds)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the precision section")
    parser.add_argument(
        "--quick", action="store_true", help="a check in seconds: 2000 images, 2 epochs, 5 pairs"
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    print_machine("vae-train speed")
    if not args.data_dir:
        sys.exit("train_speed.py: error: pass --data-dir or set VAE_DATA_DIR")
    data = load_mnist(args.data_dir)
    if args.quick:
        data = MnistImages(data.train[:2000], data.test[:500], data.source)
        args.epochs, args.seeds, args.pairs = 2, 1, 5
    n_train, n_test = len(data.train), len(data.test)
    print(
        f"data: {n_train} train / {n_test} test images from {data.source}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )
    reference_s: dict[int, float] = {}
    if "whole" in sections:
        reference_s = whole_process(args.data_dir, args.pairs, (1,) if args.quick else (5, 10))
    if "parts" in sections:
        e = 2 if args.quick else 5
        parts(args.data_dir, args.pairs, e, reference_s.get(e))
    if "precision" in sections:
        precisions(data, args.epochs, args.seeds, args.pairs)
    if "epoch" not in sections:
        return

    # The machine's speed drifts by tens of percent from minute to minute (a shared VM): each
    # pair runs all three back to back, the order flipping, and the ratios are per pair.
    runs: dict[str, list[float]] = {"ours": [], "hand": [], "reference": []}
    losses: dict[str, float] = {}
    ratios, gains = [], []
    for i in range(args.pairs):
        medians = {}
        names = ("ours", "hand", "reference")
        for name in names if i % 2 == 0 else names[::-1]:  # the order flips every other pair
            if name == "reference":
                seconds, loss = reference(data.train, data.test, args.epochs, args.seed)
            else:
                seconds, loss = _vae_train(data, args.epochs, args.seed, hand=name == "hand")
            steady = seconds[1:] if len(seconds) > 1 else seconds  # epoch 1 warms up
            runs[name] += steady
            medians[name] = float(np.median(steady))
            losses[name] = loss
            print(f"{name} epochs (s): {' '.join(f'{x:.3f}' for x in seconds)}")
        ratios.append(medians["reference"] / medians["ours"])
        gains.append(medians["ours"] / medians["hand"] - 1)
    rate, batch_rate = matmul_rate(), batch_matmul_rate()
    flops = epoch_flops(n_train, n_test)
    floor, batch_floor = flops / rate, flops / batch_rate

    ours_s, hand_s = float(np.median(runs["ours"])), float(np.median(runs["hand"]))
    ref_s = float(np.median(runs["reference"]))
    print(
        f"one epoch: {flops / 1e9:.1f} GFLOP of matmuls; matmul rate {rate / 1e9:.0f} GFLOP/s "
        f"(1024^3 GEMM), {batch_rate / 1e9:.0f} GFLOP/s (the step's batch-128 GEMM shapes)"
    )
    print()
    print("| | s / epoch (median) | test loss (nats) |")
    print("| --- | ---: | ---: |")
    print(f"| reference (PIL Dataset + DataLoader) | {ref_s:.3f} | {losses['reference']:.2f} |")
    print(f"| vae-train (autograd) | {ours_s:.3f} | {losses['ours']:.2f} |")
    print(f"| vae-train loop, hand-written backward | {hand_s:.3f} | {losses['hand']:.2f} |")
    print(f"| floor at the 1024^3 GEMM rate | {floor:.3f} | |")
    print(f"| floor at the batch-128 GEMM rate | {batch_floor:.3f} | |")
    print()
    ratio, gain = spread(ratios), float(np.median(gains))
    print(
        f"vae-train is {ratio.show(2, 'x')} the reference per epoch (target >= 3x: "
        f"{verdict(ratio.median, 3.0)}); {ours_s / floor:.2f}x the "
        f"1024^3 floor, {ours_s / batch_floor:.2f}x the batch-128 floor; test loss "
        f"{losses['ours'] - losses['reference']:+.2f} nats vs reference (target within 1)"
    )
    print(
        f"hand-written backward: {gain:+.1%} faster per epoch than autograd (pairs: "
        f"{', '.join(f'{g:+.1%}' for g in gains)}; "
        f"{'KEEP: >= 15%' if gain >= 0.15 else 'stays deleted: below the 15% bar'})"
    )


if __name__ == "__main__":
    main()
