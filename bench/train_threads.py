"""Benchmark: vae-train with torch's threads pinned one per core (--bind-threads, the default)
against unpinned (--no-bind-threads), one run alone and two runs at once, several repetitions.

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


def _start(out: Path, data: str, epochs: int, bind: bool) -> subprocess.Popen[bytes]:
    flag = "--bind-threads" if bind else "--no-bind-threads"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_PROC_BIND", "OMP_PLACES")}
    args = [str(BIN / "vae-train"), "--data-dir", data, "--out", str(out), "--epochs", str(epochs)]
    return subprocess.Popen([*args, flag, "-q", "--force"], env=env)


def _epochs(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["seconds"] for line in lines]


def run_case(data: str, epochs: int, bind: bool, together: int, tmp: Path) -> tuple[float, float]:
    """`together` runs started at once: (mean wall seconds, median epoch seconds)."""
    outs = [tmp / f"run{i}" for i in range(together)]
    start = time.perf_counter()
    procs = [_start(out, data, epochs, bind) for out in outs]
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
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for together in (1, 2):
                # alternate which setting goes first, so neither always follows the other
                for bind in (True, False) if rep % 2 == 0 else (False, True):
                    case = run_case(args.data_dir, args.epochs, bind, together, Path(tmp))
                    results.setdefault((together, bind), []).append(case)
                    print(
                        f"  {'alone' if together == 1 else 'two at once'}, "
                        f"{'pinned' if bind else 'unpinned'}: {case[0]:.2f} s wall, "
                        f"{case[1]:.3f} s/epoch"
                    )
    print()
    print("| case | setting | wall s, median (worst) | s / epoch, median (worst) |")
    print("| --- | --- | ---: | ---: |")
    for together in (1, 2):
        for bind in (True, False):
            rows = results[(together, bind)]
            walls, epochs = [r[0] for r in rows], [r[1] for r in rows]
            print(
                f"| {'alone' if together == 1 else 'two at once'} | "
                f"{'pinned (--bind-threads)' if bind else 'unpinned (--no-bind-threads)'} | "
                f"{statistics.median(walls):.2f} ({max(walls):.2f}) | "
                f"{statistics.median(epochs):.3f} ({max(epochs):.3f}) |"
            )
    for together in (1, 2):
        pinned = statistics.median(r[0] for r in results[(together, True)])
        unpinned = statistics.median(r[0] for r in results[(together, False)])
        print(
            f"{'alone' if together == 1 else 'two at once'}: unpinned / pinned wall time "
            f"= {unpinned / pinned:.2f}"
        )


if __name__ == "__main__":
    main()
