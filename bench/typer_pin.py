"""Benchmark: why typer is pinned below 0.29. Two runtime-only venvs, the same mnist-vae with
typer 0.28 (the pin) and with the newest typer: venv size, and `vae-generate`'s cold start and
peak memory for the default 5x5 grid (the deploy path's own figures).

    python bench/typer_pin.py --decoder out/decoder.onnx [--newer 0.29.2] [--pairs 9] [--quick]

The two venvs' `vae-generate` runs alternate in pairs (bench/measure.py): the cold-start figure
is the median of the pairs' ratios, with its spread. Needs PyPI (it creates two venvs, about a
minute); a measurement, not a test. --quick runs this venv's vae-generate on both sides, without
PyPI: it checks the script, it measures nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import MIN_PAIRS, alternate, print_machine

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", required=True, type=Path)
    parser.add_argument("--pinned", default="0.28.0")
    parser.add_argument("--newer", default="0.29.2")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--pairs", type=int, default=9, help="alternating pairs (>= 5)")
    parser.add_argument("--quick", action="store_true", help="this venv on both sides, no PyPI")
    args = parser.parse_args()
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    print_machine("bench/typer_pin.py" + (" --quick: not a figure" if args.quick else ""))
    decoder = args.decoder.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        bins = [
            Path(sys.executable).parent if args.quick else make_venv(Path(tmp) / f"t-{v}", v)
            for v in (args.pinned, args.newer)
        ]
        pinned, newer = (
            [str(b / "vae-generate"), "--onnx", str(decoder), "-o", f"g{i}.png", "-f"]
            for i, b in enumerate(bins)
        )
        c = alternate(pinned, newer, args.pairs, cwd=Path(tmp))
        sizes = [0.0, 0.0] if args.quick else [size_mb(b.parent) for b in bins]
    print("| typer | runtime venv MB | vae-generate 5x5, median s (min-max) | peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for version, size, wall, peak in (
        (args.pinned, sizes[0], c.seconds_a, c.peak_mb["a"]),
        (args.newer, sizes[1], c.seconds_b, c.peak_mb["b"]),
    ):
        print(
            f"| {version} | {size:.0f} | {wall.median:.3f} ({wall.low:.3f}-{wall.high:.3f}) "
            f"| {peak:.0f} |"
        )
    print(
        f"typer {args.newer} over {args.pinned}: {sizes[1] - sizes[0]:+.0f} MB venv; cold start "
        f"{c.ratio.show(2, 'x')} the pin's (newer's seconds over the pin's, alternating), "
        f"{c.peak_mb['b'] - c.peak_mb['a']:+.0f} MB peak RSS"
    )


if __name__ == "__main__":
    main()
