"""Benchmark: why typer is pinned below 0.29. Two runtime-only venvs, the same mnist-vae with
typer 0.28 (the pin) and with the newest typer: venv size, and `vae-generate`'s cold start and
peak memory for the default 5x5 grid (the deploy path's own figures).

    python bench/typer_pin.py --decoder out/decoder.onnx [--newer 0.29.2]

Needs PyPI (it creates two venvs, about a minute); a measurement, not a test.
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

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ["numpy>=1.24", "onnxruntime>=1.17", "pillow>=10.0"]


def make_venv(where: Path, typer: str) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *RUNTIME, f"typer=={typer}"], check=True)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True)  # the pin is what is measured
    return where / "bin"


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def run(args: list[str], cwd: Path) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"typer_pin.py: {' '.join(args)} failed")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", required=True, type=Path)
    parser.add_argument("--pinned", default="0.28.0")
    parser.add_argument("--newer", default="0.29.2")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    decoder = args.decoder.resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in (args.pinned, args.newer):
            bin_dir = make_venv(Path(tmp) / f"typer-{version}", version)
            generate = [str(bin_dir / "vae-generate"), "--onnx", str(decoder), "-o", "g.png", "-f"]
            run(generate, Path(tmp))  # warm-up
            walls, peaks = [], []
            for _ in range(args.runs):
                wall, peak = run(generate, Path(tmp))
                walls.append(wall)
                peaks.append(peak)
            rows.append((version, size_mb(bin_dir.parent), statistics.median(walls), max(peaks)))
    print("| typer | runtime venv MB | vae-generate 5x5, median s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for version, size, wall, peak in rows:
        print(f"| {version} | {size:.0f} | {wall:.3f} | {peak:.0f} |")
    (_, s0, w0, p0), (_, s1, w1, p1) = rows
    print(
        f"typer {args.newer} over {args.pinned}: {s1 - s0:+.0f} MB venv, "
        f"{1000 * (w1 - w0):+.0f} ms cold start, {p1 - p0:+.0f} MB peak RSS"
    )


if __name__ == "__main__":
    main()
