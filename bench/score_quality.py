"""How well vae-score's bound tells MNIST test digits from inputs that are not digits.

    VAE_DATA_DIR=/path/to/mnist python bench/score_quality.py --onnx-dir out --count 2000
    python bench/score_quality.py --onnx-dir out --data-dir DIR --quick   # a check in seconds

Scores (the IWAE bound, k samples, seed 0, with the runtime Scorer) the first --count MNIST test
digits and, against them: uniform noise, inverted digits (255 - x), digits rotated by 90
degrees, the letters A-Z rendered in every DejaVu font Debian ships (Pillow's default font when
none is found) and fitted to 28x28 as `vae_runtime.inputs.fit_mnist` fits a drawing. For each
set: the area under the ROC curve of the score separating digits (typical) from the set, and
the share under the threshold (the reference's 0.1th percentile, or the digits' own when the
manifest has no reference). Then simple shapes (vertical bars, "I"s), reported as scoring more
or less typical than digits (their mean percentile against digits' 50). Targets for the 10-epoch
default model: AUROC >= 0.99 for noise and inverted digits. Writes a PNG: a histogram of each
set's scores with the threshold marked (matplotlib, from the [train] extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.inputs import fit_mnist
from vae_runtime.scoring import Scorer

TARGETS = {"uniform noise": 0.99, "inverted digits": 0.99}
THRESHOLD_PERCENTILE = 0.1
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype"))
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half: the Mann-Whitney U / (m n)."""
    neg = np.sort(negative)
    below = np.searchsorted(neg, positive, side="left")
    equal = np.searchsorted(neg, positive, side="right") - below
    return float((below + 0.5 * equal).sum() / (len(positive) * len(negative)))


def fonts() -> list[Path]:
    """The DejaVu TrueType fonts on this machine (Debian's fonts-dejavu-core), by name."""
    for folder in FONT_DIRS:
        found = sorted(folder.rglob("DejaVu*.ttf")) if folder.is_dir() else []
        if found:
            return found
    return []


def _font(path: Path | None, size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size) if path else ImageFont.load_default(size=size)


def render(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> np.ndarray:
    """Black `text` on white at 96x96, fitted like a drawing: uint8 (28, 28), white on black."""
    canvas = Image.new("L", (96, 96), 255)
    ImageDraw.Draw(canvas).text((48, 48), text, fill=0, font=font, anchor="mm")
    return fit_mnist(np.asarray(canvas))


def letters() -> tuple[np.ndarray, str]:
    found = fonts()
    paths: list[Path | None] = list(found) or [None]
    images = [render(c, _font(p, 64)) for p in paths for c in _LETTERS]
    where = f"{len(found)} DejaVu fonts" if found else "Pillow's default font"
    return np.stack(images), where


def shapes() -> np.ndarray:
    """Vertical bars of several widths and heights, and "I" in each font: uint8 (n, 28, 28)."""
    out = []
    for width in (4, 8, 12, 16):
        for height in (40, 60, 80):
            canvas = np.full((96, 96), 255, np.uint8)
            top, left = 48 - height // 2, 48 - width // 2
            canvas[top : top + height, left : left + width] = 0
            out.append(fit_mnist(canvas))
    out += [render("I", _font(p, 64)) for p in (fonts() or [None])]
    return np.stack(out)


def test_digits(data_dir: str, count: int) -> np.ndarray:
    found = sorted(Path(data_dir).glob("t10k-images*"))
    if not found:
        sys.exit(f"score_quality: no t10k-images file in {data_dir}")
    return np.ascontiguousarray(read_idx(found[0], IMAGES_MAGIC, limit=count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=Path("out"), help="vae-export's folder")
    parser.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"), help="MNIST")
    parser.add_argument("--count", type=int, default=2000, help="test digits (and noise, ...)")
    parser.add_argument("-k", type=int, default=64, help="importance samples per image")
    parser.add_argument("--out", type=Path, default=Path("score_quality.png"), help="histogram")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a check, no figure")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("score_quality: MNIST is needed: set VAE_DATA_DIR or pass --data-dir")
    if args.quick:
        args.count, args.k = 64, 4
    scorer = Scorer.load(args.onnx_dir)
    digits = test_digits(args.data_dir, args.count)
    n = len(digits)
    rng = np.random.default_rng(0)
    typed, font_note = letters()
    sets: dict[str, np.ndarray] = {
        "MNIST test digits": digits,
        "uniform noise": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "inverted digits": 255 - digits,
        "digits rotated 90": np.ascontiguousarray(np.rot90(digits, axes=(1, 2))),
        f"letters A-Z ({font_note})": typed,
        "bars and I's": shapes(),
    }
    scores = {name: scorer.score(images, k=args.k, seed=0).iwae for name, images in sets.items()}
    reference = scorer.reference
    ours = scores["MNIST test digits"]
    percentile: Callable[[np.ndarray], np.ndarray]
    if reference is not None:
        percentile = reference.percentile
        threshold = float(np.interp(THRESHOLD_PERCENTILE, np.linspace(0, 100, 1001),
                                    reference.quantiles))  # fmt: skip
        against = f"the manifest's reference ({reference.source}, k {reference.k})"
    else:
        ordered = np.sort(ours)

        def percentile(v: np.ndarray) -> np.ndarray:
            return 100.0 * np.searchsorted(ordered, v) / len(ordered)

        threshold = float(np.percentile(ours, THRESHOLD_PERCENTILE))
        against = "the scored test digits (the manifest has no reference)"
    print(f"score_quality: IWAE bound, k {args.k}, seed 0, graphs {args.onnx_dir}")
    print(f"percentiles and threshold against {against}")
    print(f"threshold: p{THRESHOLD_PERCENTILE:g} = {threshold:.2f} nats\n")
    print("| set | images | mean iwae (nats) | mean percentile | AUROC vs digits | target | "
          "under the threshold |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for name, values in scores.items():
        area = "" if values is ours else f"{auroc(ours, values):.4f}"
        target = TARGETS.get(name)
        mark = ""
        if target is not None:
            mark = f">= {target}: " + ("met" if auroc(ours, values) >= target else "**missed**")
        print(
            f"| {name} | {len(values):,} | {values.mean():.2f} | "
            f"{percentile(values).mean():.1f} | {area} | {mark} | "
            f"{(values < threshold).mean():.1%} |"
        )
    shape_p = float(percentile(scores["bars and I's"]).mean())
    digit_p = float(percentile(ours).mean())
    side = "MORE" if shape_p > digit_p else "less"
    print(
        f"\nsimple shapes (bars, I's) score {side} typical than digits: mean percentile "
        f"{shape_p:.1f} against the digits' {digit_p:.1f}"
    )
    plot(scores, threshold, args.out, args.k)
    print(f"histogram -> {args.out}")
    if args.quick:
        print("(--quick: tiny settings, a check of the script; these are not figures)")


def plot(scores: dict[str, np.ndarray], threshold: float, out: Path, k: int) -> None:
    """One histogram per set of -iwae on a log axis (the sets span orders of magnitude)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = {name: np.maximum(-values, 1e-1) for name, values in scores.items()}
    every = np.concatenate(list(losses.values()))
    bins = np.geomspace(every.min(), every.max() * 1.01, 80)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for name, values in losses.items():
        ax.hist(values, bins=bins, histtype="step", linewidth=1.6, density=True, label=name)
    ax.axvline(-threshold, color="black", linestyle="--", label=f"threshold ({threshold:.1f})")
    ax.set_xscale("log")
    ax.set_xlabel(f"-IWAE bound, nats per image (k = {k}); right of the line: flagged")
    ax.set_ylabel("density")
    ax.set_title("vae-score: MNIST test digits against inputs that are not digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
