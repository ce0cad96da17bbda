"""Benchmark: every command as a user runs it, at its defaults: wall time and peak memory, and
the start-up cost of `--help` with the packages' lazy exports against importing them eagerly.

    python bench/commands.py --data-dir /path/to/mnist [--runs 5] [--pairs 7] [--quick]

Each figure is a whole process (bench/measure.py; peak RSS from wait4): a command's wall time is
the median of --runs runs after a warm-up (min-max beside it); `--help` lazy against "eager"
(the same entry point after importing what a plain, non-lazy package `__init__` would import:
vae_train's and vae_export's torch modules) runs in alternating pairs, the ratio the median of
the pairs'. Every run passes --force: the runs write over the first one's files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from measure import MIN_PAIRS, alternate, print_machine, repeat

BIN = Path(sys.executable).parent
EAGER = {
    "vae-train": "import vae_train.training; from vae_train.__main__ import main",
    "vae-export": "import vae_export.onnx_export; from vae_export.__main__ import main",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"))
    parser.add_argument("--runs", type=int, default=5, help="runs per command (after a warm-up)")
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs per ratio (>= 5)")
    parser.add_argument("--quick", action="store_true", help="vae-train 1 epoch, 1 run: a check")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("commands.py: error: pass --data-dir or set VAE_DATA_DIR")
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    print_machine("bench/commands.py" + (" --quick: not a figure" if args.quick else ""))
    data = Path(args.data_dir).resolve()
    env = {**os.environ, "VAE_DATA_DIR": str(data)}
    test_images = next(data.glob("t10k-images-idx3-ubyte*"))
    runs = 1 if args.quick else args.runs
    args.pairs = MIN_PAIRS if args.quick else args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        commands = [
            ("vae-train", ["--epochs", "1"] if args.quick else []),
            ("vae-export", ["model.pt"]),
            ("vae-generate", ["--onnx", "decoder.onnx"]),
            ("vae-interpolate", ["--onnx", "decoder.onnx"]),
            ("vae-reconstruct", ["--encoder", "encoder.onnx", "--decoder", "decoder.onnx"]),
        ]
        print(
            f"wall: median of {runs} runs (min-max); --help: lazy median (min-max), and eager "
            f"over lazy, median of {args.pairs} alternating pairs (min-max, IQR)"
        )
        print("| command, defaults | wall s | peak RSS MB | --help s (lazy) | eager / lazy |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, extra in commands:
            if name == "vae-reconstruct":
                extra = [*extra, str(test_images)]
            wall, rss = repeat([str(BIN / name), *extra, "--force"], runs, cwd=work, env=env)
            lazy = [str(BIN / name), "--help"]
            if name in EAGER:
                code = f"import sys; sys.argv = ['{name}', '--help']; {EAGER[name]}; main()"
                c = alternate(lazy, [sys.executable, "-c", code], args.pairs, cwd=work, env=env)
                help_s, eager = c.seconds_a, c.ratio.show(1, "x")
            else:
                help_s, eager = repeat(lazy, args.pairs, cwd=work, env=env)[0], ""
            wall_text = wall.show(2, " s") if runs > 1 else f"{wall.median:.2f}"
            print(
                f"| `{name}` | {wall_text} | {rss:.0f} | {help_s.median:.2f} "
                f"({help_s.low:.2f}-{help_s.high:.2f}) | {eager} |"
            )


if __name__ == "__main__":
    main()
