"""Benchmark: how vae-train's OpenMP threads should run: pinned one per core or not, spinning
while they wait (libgomp's default), sleeping after a short spin (GOMP_SPINCOUNT=10000) or
sleeping at once (OMP_WAIT_POLICY=PASSIVE); one run alone and two runs at once, repeated.
vae-train's default (--tune-threads) is "pinned, spin 10k then sleep"; --no-tune-threads is
"unpinned, libgomp's default wait".

    python bench/train_threads.py --data-dir /path/to/mnist      (or VAE_DATA_DIR=...)

Each run is a whole `vae-train --epochs E` process; its wall time and its epochs' seconds (from
metrics.jsonl) are recorded. The two settings alternate, so machine noise hurts both alike. The
default must lose in neither case: the table gives median and worst per case, and the ratio.
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
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("train_threads.py: error: pass --data-dir or set VAE_DATA_DIR")
    print(f"{os.cpu_count()} cores; vae-train --epochs {args.epochs}, {args.repeats} repetitions")
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    names = list(SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for together in (1, 2):
                # rotate the order, so that no setting always follows the same one
                for setting in names[rep % len(names) :] + names[: rep % len(names)]:
                    case = run_case(args.data_dir, args.epochs, setting, together, Path(tmp))
                    results.setdefault((together, setting), []).append(case)
                    print(
                        f"  {'alone' if together == 1 else 'two at once'}, {setting}: "
                        f"{case[0]:.2f} s wall, {case[1]:.3f} s/epoch"
                    )
    print()
    print("| case | threads | wall s, median (worst) | s / epoch, median (worst) |")
    print("| --- | --- | ---: | ---: |")
    for together in (1, 2):
        for setting in names:
            rows = results[(together, setting)]
            walls, epochs = [r[0] for r in rows], [r[1] for r in rows]
            print(
                f"| {'alone' if together == 1 else 'two at once'} | {setting} | "
                f"{statistics.median(walls):.2f} ({max(walls):.2f}) | "
                f"{statistics.median(epochs):.3f} ({max(epochs):.3f}) |"
            )


if __name__ == "__main__":
    main()
