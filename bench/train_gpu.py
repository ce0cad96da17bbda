"""Benchmark: vae-train on a CUDA GPU: the captured step against the eager one, and the process.

    python bench/train_gpu.py                     (VAE_DATA_DIR: real data, else synthetic)
    python bench/train_gpu.py --quick             (seconds: checks that the script runs)
    python bench/train_gpu.py --device cpu        (a dry run without a GPU)

Per epoch at batch 128 (training pass and test evaluation, fp32): the step recorded in a CUDA
graph (`graphs.capture_step`, the default) against the same step run eagerly (VAE_CUDA_GRAPHS=0),
in alternating pairs (bench/measure.py), each sample one more epoch of its own run. Then the
test loss of the two after those epochs, `--precision bf16` on cuda (refused, one line), and a
whole 10-epoch `vae-train --device cuda` process against the floor the machine sets,
`python -c "import torch; torch.zeros(1, device='cuda')"`, alternating. Targets: at most
0.05 s per epoch; the process at most 1.5 s above the floor. `--device cpu` is a dry run of the
whole script (both steps eager, the process against `import torch`), for checking it before a
GPU session; bench/gpu_check.sh runs it with the tests, from the sources, on a bare machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from measure import alternate, alternate_samples, print_machine, verdict

from vae_train.data import MnistImages, load_mnist
from vae_train.device import Progress
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings, _Run

EPOCH_TARGET_S = 0.05
PROCESS_MARGIN_S = 1.5
# `python -m vae_train` is vae-train's own entry point, installed or not (gpu_check.sh runs it
# from the sources on PYTHONPATH, on machines without this project installed).
VAE_TRAIN = [sys.executable, "-m", "vae_train"]


def _floor(device: torch.device) -> list[str]:
    """The process vae-train cannot beat on `device`: import torch (and the first CUDA call)."""
    first_call = "; torch.zeros(1, device='cuda')" if device.type == "cuda" else ""
    return [sys.executable, "-c", "import torch" + first_call]


def _data(data_dir: str | None, quick: bool) -> MnistImages:
    if data_dir:
        data = load_mnist(data_dir)
    else:
        rng = np.random.default_rng(0)
        train, test = (
            (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255 for n in (60000, 10000)
        )
        data = MnistImages(train, test, "synthetic")
    if quick:
        data = MnistImages(data.train[:2000], data.test[:500], data.source)
    return data


def _epoch_sampler(
    data: MnistImages, graphs: bool, device: torch.device
) -> tuple[_Run, Callable[[], float]]:
    """A run on `device` and a sampler: each call trains one more epoch, returns its seconds."""
    settings = TrainSettings(epochs=10_000, device=str(device))
    run = _Run(settings, VAEConfig(), device, data)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    quiet, path = Progress(enabled=False), Path("model.pt")

    def sample() -> float:
        previous = os.environ.get("VAE_CUDA_GRAPHS")
        os.environ["VAE_CUDA_GRAPHS"] = "1" if graphs else "0"  # read when the step is made
        try:
            sync()
            start = time.perf_counter()
            run.epoch += 1
            run._train_epoch(run.epoch, quiet, path)
            run._evaluate(run.epoch)
            sync()
            return time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop("VAE_CUDA_GRAPHS")
            else:
                os.environ["VAE_CUDA_GRAPHS"] = previous

    return run, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument(
        "--quick", action="store_true", help="small data, 5 pairs, 1-epoch processes: a check"
    )
    parser.add_argument(
        "--device", default="cuda", help="cpu: a dry run of the script (both steps eager)"
    )
    args = parser.parse_args()
    print_machine("vae-train on a GPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("train_gpu.py: no CUDA device visible here; run it on a GPU machine")
    device = torch.device(args.device)
    pairs = 5 if args.quick else args.pairs
    data = _data(args.data_dir, args.quick)
    print(f"data: {len(data.train)} train / {len(data.test)} test ({data.source}), batch 128, fp32")
    captured_run, captured = _epoch_sampler(data, True, device)
    eager_run, eager = _epoch_sampler(data, False, device)
    result = alternate_samples(captured, eager, pairs=pairs, warmup=1)
    if device.type == "cuda":  # the graph was used by one, not the other
        assert captured_run._step is not None
        assert eager_run._step is None
    per_epoch = result.seconds_a
    where = "GPU" if device.type == "cuda" else f"{device.type} (a dry run: both steps eager)"
    print(f"\n| {where}, batch 128, fp32 | s / epoch | target |")
    print("| --- | ---: | --- |")
    print(
        f"| captured step (CUDA graph) | {per_epoch.show(3)} | <= {EPOCH_TARGET_S} "
        f"{verdict(per_epoch.median, EPOCH_TARGET_S, higher_is_better=False)} |"
    )
    print(f"| eager step | {result.seconds_b.show(3)} | |")
    print(f"| captured over eager | {result.ratio.show(2, 'x')} | |")
    losses = [r._evaluate(r.epoch) for r in (captured_run, eager_run)]
    print(
        f"test loss after {captured_run.epoch} epochs: captured {sum(losses[0]):.3f}, eager "
        f"{sum(losses[1]):.3f} (same data order and noise: equal to float32 rounding)"
    )
    if device.type == "cuda":
        refused = subprocess.run(
            [*VAE_TRAIN, "--device", "cuda", "--precision", "bf16", "--out", tempfile.mkdtemp()],
            capture_output=True,
            text=True,
            check=False,
        )
        said = refused.stderr.strip()[:160]
        print(f"--precision bf16 on cuda: exit {refused.returncode}: {said}")
    if not args.data_dir:
        print("whole process: skipped (needs --data-dir or VAE_DATA_DIR)")
        return
    epochs = 1 if args.quick else 10
    with tempfile.TemporaryDirectory() as out:
        train = [
            *VAE_TRAIN,
            "--data-dir",
            args.data_dir,
            "--out",
            out,
            "-q",
            "-f",
            "--epochs",
            str(epochs),
            "--device",
            device.type,
        ]
        whole = alternate(train, _floor(device), pairs=5, warmup=1)
    gap = [a - b for a, b in zip(whole.a, whole.b, strict=True)]
    median_gap = float(np.median(gap))
    print("\n| whole process | seconds | target |")
    print("| --- | ---: | --- |")
    floor = "import torch + first CUDA call" if device.type == "cuda" else "import torch"
    print(f"| vae-train --device {device.type} --epochs {epochs} | {whole.seconds_a.show(2)} | |")
    print(f"| floor: {floor} | {whole.seconds_b.show(2)} | |")
    print(
        f"| vae-train minus floor (per pair) | {median_gap:.2f} ({min(gap):.2f}-{max(gap):.2f}) "
        f"| <= {PROCESS_MARGIN_S} {verdict(median_gap, PROCESS_MARGIN_S, False)} |"
    )


if __name__ == "__main__":
    main()
