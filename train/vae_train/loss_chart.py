"""loss.png, drawn with PIL: vae-train writes it after every epoch, so it must be cheap.

matplotlib drew it before: importing it cost ~0.65 s of each `vae-train` process and drawing
~0.1-0.3 s after every epoch (python -X importtime; cProfile of a run; docs/vae-train.md#speed),
seconds outside the epochs that the reference script does not pay. This draws the same chart
(two panels: loss and BCE per epoch on the left, KL on the right; train blue, test orange; BCE
dashed) with PIL's ImageDraw in a few milliseconds. vae-eval's bar chart keeps matplotlib.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from typing import Any

SIZE = (900, 360)
COLOURS = {"train": (31, 119, 180), "test": (255, 127, 14)}  # matplotlib's tab:blue, tab:orange
_GRID, _AXIS, _TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)
# Panel boxes (left, top, right, bottom) in pixels, as the old figure's margins put them.
_PANELS = ((72, 64, 438, 310), (510, 64, 882, 310))


def loss_png(metrics: Sequence[dict[str, Any]], title: str) -> bytes:
    """loss.png: per epoch, the train and test loss (nats per image) with their BCE part on the
    left, their KL part on the right (a scale of its own: it is a fifth of the loss)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, big = ImageFont.load_default(size=11), ImageFont.load_default(size=13)
    draw.text((SIZE[0] // 2, 14), title, fill=_TEXT, font=big, anchor="mm")
    epochs = [int(m["epoch"]) for m in metrics]
    marker = len(epochs) <= 30
    left = [
        (split, [float(m[f"{split}_{key}"]) for m in metrics], key == "bce", label)
        for split in ("train", "test")
        for key, label in (("loss", f"{split} loss (BCE + KL)"), ("bce", f"{split} BCE"))
    ]
    right = [(s, [float(m[f"{s}_kl"]) for m in metrics], False, f"{s} KL") for s in COLOURS]
    panels = (
        (left, "loss and its reconstruction (BCE) part", "upper"),
        (right, "KL(q(z|x) || N(0, I))", "lower"),
    )
    for box, (series, heading, corner) in zip(_PANELS, panels, strict=True):
        _panel(draw, font, box, epochs, series, marker)
        draw.text(((box[0] + box[2]) // 2, box[1] - 12), heading, fill=_TEXT, font=big, anchor="mm")
        draw.text(
            ((box[0] + box[2]) // 2, box[3] + 32), "epoch", fill=_TEXT, font=font, anchor="mm"
        )
        _legend(draw, font, box, series, corner)
    label = Image.new("L", (120, 16), 0)
    ImageDraw.Draw(label).text((60, 8), "nats per image", fill=255, font=font, anchor="mm")
    rotated = label.rotate(90, expand=True)
    image.paste(Image.new("RGB", rotated.size, _TEXT), (4, (64 + 310) // 2 - 60), rotated)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _panel(
    draw: Any,
    font: Any,
    box: tuple[int, int, int, int],
    epochs: list[int],
    series: list[tuple[str, list[float], bool, str]],
    marker: bool,
) -> None:
    x0, y0, x1, y1 = box
    values = [v for _, vs, _, _ in series for v in vs if math.isfinite(v)] or [0.0]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1.0)
    lo, hi = lo - pad, hi + pad
    e_lo, e_hi = float(min(epochs)), float(max(epochs))
    if e_lo == e_hi:
        e_lo, e_hi = e_lo - 0.5, e_hi + 0.5
    e_pad = (e_hi - e_lo) * 0.05
    e_lo, e_hi = e_lo - e_pad, e_hi + e_pad

    def at(epoch: float, value: float) -> tuple[float, float]:
        return (
            x0 + (epoch - e_lo) / (e_hi - e_lo) * (x1 - x0),
            y1 - (value - lo) / (hi - lo) * (y1 - y0),
        )

    for tick in nice_ticks(lo, hi):
        y = at(e_lo, tick)[1]
        draw.line([(x0, y), (x1, y)], fill=_GRID)
        draw.text((x0 - 6, y), f"{tick:g}", fill=_TEXT, font=font, anchor="rm")
    step = max(1, math.ceil((max(epochs) - min(epochs) + 1) / 10))
    for epoch in range(min(epochs), max(epochs) + 1, step):
        x = at(epoch, lo)[0]
        draw.line([(x, y0), (x, y1)], fill=_GRID)
        draw.text((x, y1 + 12), str(epoch), fill=_TEXT, font=font, anchor="mm")
    draw.rectangle(box, outline=_AXIS)
    for split, vs, dashed, _ in series:
        points = [at(e, v) for e, v in zip(epochs, vs, strict=True) if math.isfinite(v)]
        colour = COLOURS[split]
        if dashed:
            _dashed(draw, points, colour)
        elif len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        if marker and not dashed:
            for x, y in points:
                draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=colour)


def _dashed(draw: Any, points: list[tuple[float, float]], colour: tuple[int, ...]) -> None:
    dash, gap = 7.0, 4.0
    for (ax, ay), (bx, by) in itertools.pairwise(points):
        length = math.hypot(bx - ax, by - ay)
        t = 0.0
        while t < length:
            end = min(t + dash, length)
            draw.line(
                [
                    (ax + (bx - ax) * t / length, ay + (by - ay) * t / length),
                    (ax + (bx - ax) * end / length, ay + (by - ay) * end / length),
                ],
                fill=colour,
                width=2,
            )
            t = end + gap


def _legend(
    draw: Any,
    font: Any,
    box: tuple[int, int, int, int],
    series: list[tuple[str, list[float], bool, str]],
    corner: str,
) -> None:
    width, row = 150, 15
    height = row * len(series) + 8
    x = box[2] - width - 8
    y = box[1] + 8 if corner == "upper" else box[3] - height - 8
    draw.rectangle([(x, y), (x + width, y + height)], fill="white", outline=_GRID)
    for i, (split, _, dashed, label) in enumerate(series):
        cy = y + 4 + row * i + row // 2
        if dashed:
            _dashed(draw, [(x + 6, cy), (x + 30, cy)], COLOURS[split])
        else:
            draw.line([(x + 6, cy), (x + 30, cy)], fill=COLOURS[split], width=2)
        draw.text((x + 36, cy), label, fill=_TEXT, font=font, anchor="lm")
