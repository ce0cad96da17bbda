"""The pictures vae-train and vae-eval write, as bytes to stage with their other outputs.

PNG and GIF encoding and grid tiling are the runtime's (`vae_runtime.images`). vae-eval's chart
is drawn with matplotlib, imported inside the function that draws (its import costs ~0.65 s,
which a command that draws nothing should not pay), on an Agg canvas of its own: no pyplot, no
global backend, nothing left behind between calls. loss.png, written after every epoch, is
drawn with PIL (loss_chart.py).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from vae_runtime.images import gif_bytes, tile

PROGRESS_SCALE = 2  # each 28x28 digit drawn 56x56 in progress.gif
PROGRESS_FRAME_MS = 300
PROGRESS_HOLD = 4  # the last epoch's frame is shown this many times as long: the loop pauses
_CAPTION_PX = 22  # the strip under each frame that says which epoch it is


def progress_frame(images: np.ndarray, epoch: int, epochs: int) -> np.ndarray:
    """uint8 (25, 28, 28) decoded latents -> one GIF frame: their 5x5 grid, scaled, above a
    caption "epoch E/N"."""
    from PIL import Image, ImageDraw, ImageFont

    grid = tile(images, 5, 5, padding=2, scale=PROGRESS_SCALE)  # (304, 304)
    caption = Image.new("L", (grid.shape[1], _CAPTION_PX), 0)
    ImageDraw.Draw(caption).text(
        (grid.shape[1] // 2, _CAPTION_PX // 2),
        f"epoch {epoch}/{epochs}",
        fill=255,
        anchor="mm",
        font=ImageFont.load_default(size=14),
    )
    return np.concatenate([grid, np.asarray(caption)], axis=0)


def progress_gif(frames: Sequence[np.ndarray]) -> bytes:
    """Frames from `progress_frame` as a looping GIF, the last one held a little longer."""
    held = [*frames, *[frames[-1]] * (PROGRESS_HOLD - 1)]
    return gif_bytes(np.stack(held), frame_ms=PROGRESS_FRAME_MS, loop=True)


def _canvas(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins, not layout="constrained": its solver cost ~60 ms of each ~180 ms drawing,
    # paid after every epoch by vae-train.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.82, wspace=0.22)
    return figure, FigureCanvasAgg(figure)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def kl_bars_png(kl: Sequence[float], active: Sequence[bool], title: str) -> bytes:
    """The per-dimension KL bar chart of vae-eval: one bar per latent dimension, active units
    (Burda et al.'s activity > 0.01) in blue, inactive ones in grey."""
    figure, _ = _canvas(max(5.0, min(16.0, 0.3 * len(kl) + 2)), 3.6)
    ax = figure.subplots()
    colours = ["tab:blue" if a else "tab:grey" for a in active]
    ax.bar(range(len(kl)), kl, color=colours)
    ax.set_xlabel("latent dimension (grey: inactive, activity <= 0.01)")
    ax.set_ylabel("mean KL (nats per image)")
    if len(kl) <= 64:
        ax.set_xticks(range(len(kl)))
        ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _png(figure)
