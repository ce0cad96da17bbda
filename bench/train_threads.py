"""Benchmark: how vae-train's OpenMP threads should run: pinned one per core or not, spinning
while they wait (libgomp's default), sleeping after a short spin (GOMP_SPINCOUNT=10000) or
sleeping at once (OMP_WAIT_POLICY=PASSIVE); one run alone and two runs at once, repeated.
vae-train's default (--tune-threads) is "pinned, spin 10k then sleep"; --no-tune-threads is
"unpinned, libgomp's default wait".

    python bench/train_threads.py --data-dir /path/to/mnist [--pairs 5] [--all] [--quick]

Each run is a whole `vae-train --epochs E` process (or two started at once); its wall time and its
epochs' seconds after the first (from metrics.jsonl) are recorded. The default and one other
setting run in alternating pairs (bench/measure.py), so machine noise hurts both alike; the
ratios (the other's seconds over the default's: above 1, the default is faster) are medians of
the pairs' ratios, with their spread. The default must lose in neither case. Without --all, the
default meets --no-tune-threads only (libgomp's defaults); --all adds every setting below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from measure import MIN_PAIRS, alternate_samples, print_machine, spread

BIN = Path(sys.executable).parent


SETTINGS = {  # name: (vae-train's flag, environment)
    "pinned, libgomp's default wait": (
        "--no-tune-threads",
        {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    ),
    "unpinned, libgomp's default wait (--no-tune-threads)": ("--no-tune-threads", {}),
    "pinned, spin 10k then sleep (--tune-threads)": ("--tune-threads", {}),
    "unpinned, spin 10k then sleep": ("--no-tune-threads", {"GOMP_SPINCOUNT": "10000"}),
    "unpinned, sleeping": ("--no-tune-threads", {"OMP_WAIT_POLICY": "PASSIVE"}),
}
DEFAULT = "pinned, spin 10k then sleep (--tune-threads)"
NO_TUNE = "unpinned, libgomp's default wait (--no-tune-threads)"
_OURS = ("OMP_PROC_BIND", "OMP_PLACES", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "VAE_TUNE_THREADS")


def _start(out: Path, data: str, epochs: int, setting: str) -> subprocess.Popen[bytes]:
    flag, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in _OURS} | extra
    args = [str(BIN / "vae-train"), "--data-dir", data, "--out", str(out), "--epochs", str(epochs)]
    return subprocess.Popen([*args, flag, "-q", "--force"], env=env)


def _epochs(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in lines]


def run_case(data: str, epochs: int, setting: str, together: int, tmp: Path) -> tuple[float, float]:
    """`together` runs started at once: (mean wall seconds, median epoch seconds)."""
    outs = [tmp / f"run{i}" for i in range(together)]
    start = time.perf_counter()
    procs = [_start(out, data, epochs, setting) for out in outs]
    walls = []
    for proc in procs:
        if proc.wait() != 0:
            sys.exit("train_threads.py: a vae-train run failed")
        walls.append(time.perf_counter() - start)
    epoch_times = [s for out in outs for s in _epochs(out)[1:]]
    return statistics.mean(walls), statistics.median(epoch_times)


def _sampler(
    data: str, epochs: int, setting: str, together: int, tmp: Path, epoch_s: list[float]
) -> Callable[[], float]:
    """A sample of `setting`: the wall seconds of its case; its median epoch into `epoch_s`."""

    def sample() -> float:
        wall, per_epoch = run_case(data, epochs, setting, together, tmp)
        epoch_s.append(per_epoch)
        return wall

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs per case (>= 5)")
    parser.add_argument("--all", action="store_true", help="every setting, not only the two")
    parser.add_argument("--quick", action="store_true", help="2 epochs, alone, one other: a check")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("train_threads.py: error: pass --data-dir or set VAE_DATA_DIR")
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    print_machine("bench/train_threads.py" + (" --quick: not a figure" if args.quick else ""))
    epochs = 2 if args.quick else args.epochs  # the first epoch is not counted: 2 at least
    every = args.all and not args.quick
    others = [n for n in SETTINGS if n != DEFAULT] if every else [NO_TUNE]
    print(f"vae-train --epochs {epochs}; the default ({DEFAULT}) against each, {args.pairs} pairs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for together in (1,) if args.quick else (1, 2):
            case = "alone" if together == 1 else "two at once"
            for other in others:
                epoch_s: dict[str, list[float]] = {DEFAULT: [], other: []}
                a, b = (
                    _sampler(args.data_dir, epochs, name, together, Path(tmp), epoch_s[name])
                    for name in (DEFAULT, other)
                )
                c = alternate_samples(a, b, args.pairs, warmup=1, label=f"{case}, {other}")
                mine, theirs = epoch_s[DEFAULT][1:], epoch_s[other][1:]  # [0]: the warm-up
                per_epoch = spread([t / m for m, t in zip(mine, theirs, strict=True)])
                rows.append(
                    f"| {case} | {other} | {c.seconds_a.median:.2f} | {c.seconds_b.median:.2f} "
                    f"| {c.ratio.show(2, 'x')} | {statistics.median(mine):.3f} | "
                    f"{statistics.median(theirs):.3f} | {per_epoch.show(2, 'x')} |"
                )
                print(f"  {case}, {other}: wall {c.ratio.show(2, 'x')}", flush=True)
    print()
    print(
        "| case | other setting | default wall s | other wall s | other / default, wall | "
        "default s/epoch | other s/epoch | other / default, s/epoch |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
