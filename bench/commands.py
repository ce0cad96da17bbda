"""Benchmark: every command as a user runs it, at its defaults: wall time and peak memory, and
the start-up cost of `--help` with the packages' lazy exports against importing them eagerly.

    python bench/commands.py --data-dir /path/to/mnist      (or VAE_DATA_DIR=...)

Each figure is a whole process (peak RSS from wait4). `--help` is the median of 7 runs after a
warm-up; "eager" runs the same entry point after importing what a plain (non-lazy) package
`__init__` would import (vae_train's and vae_export's torch modules), which is what the lazy
exports save.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EAGER = {
    "vae-train": "import vae_train.training; from vae_train.__main__ import main",
    "vae-export": "import vae_export.onnx_export; from vae_export.__main__ import main",
}


def measure(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"commands.py: {' '.join(args)} failed ({proc.returncode})")
    return wall, usage.ru_maxrss / 1024


def median_wall(args: list[str], cwd: Path, env: dict[str, str], runs: int = 7) -> float:
    measure(args, cwd, env)  # warm the page cache
    return statistics.median(measure(args, cwd, env)[0] for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("commands.py: error: pass --data-dir or set VAE_DATA_DIR")
    data = Path(args.data_dir).resolve()
    env = {**os.environ, "VAE_DATA_DIR": str(data)}
    test_images = next(data.glob("t10k-images-idx3-ubyte*"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = [
            ("vae-train", []),
            ("vae-export", ["model.pt"]),
            # --force: vae-train's samples.png and reconstructions.png are in the same folder
            ("vae-generate", ["--onnx", "decoder.onnx", "--force"]),
            ("vae-interpolate", ["--onnx", "decoder.onnx", "--force"]),
            ("vae-reconstruct", ["--encoder", "encoder.onnx", "--decoder", "decoder.onnx", "-f"]),
        ]
        print("| command, defaults | wall s | peak RSS MB | --help s (lazy) | --help s (eager) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, extra in runs:
            if name == "vae-reconstruct":
                extra = [*extra, str(test_images)]
            wall, rss = measure([str(BIN / name), *extra], work, env)
            lazy = median_wall([str(BIN / name), "--help"], work, env)
            eager = ""
            if name in EAGER:
                code = f"import sys; sys.argv = ['{name}', '--help']; {EAGER[name]}; main()"
                eager = f"{median_wall([sys.executable, '-c', code], work, env):.2f}"
            print(f"| `{name}` | {wall:.2f} | {rss:.0f} | {lazy:.2f} | {eager} |")


if __name__ == "__main__":
    main()
