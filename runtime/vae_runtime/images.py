"""Image grids and image files: float pixels in [0, 1] -> uint8 -> tiled grid -> PNG / GIF bytes.

The grid rules (rows, cols, padding, scale, and the pixel cap) live in `grid_size`; commands call
it before loading anything. `png_bytes`/`gif_bytes` encode in memory, so a command can stage the
bytes with its other outputs (`fileio.Outputs`); `save_png`/`save_gif` write one file directly.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InvalidArgumentError, NumericalError, as_array, check_int
from .fileio import write_file

MAX_GRID_PIXELS = 1 << 26  # 64 Mpx (64 MiB as uint8): larger grids are refused before allocating
MAX_SCALE = 64  # a 28x28 image at 64x is 1792x1792 pixels
MAX_PADDING = 1000
MAX_FRAME_MS = 60_000


def to_uint8(images: Any) -> np.ndarray:
    """Pixels -> uint8 (N, H, W): float in [0, 1] (values outside are clipped) of shape
    (N, 1, H, W), (N, H, W) or (H, W), or uint8 as they are. NaN is a NumericalError."""
    array = as_array("images", images)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or min(array.shape[1:], default=0) < 1:
        raise InvalidArgumentError(
            f"images must have shape (N, 1, H, W), (N, H, W) or (H, W), got {np.shape(images)}"
        )
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f":
        raise InvalidArgumentError(f"images must be uint8 or float in [0, 1], got {array.dtype}")
    if not np.isfinite(array).all():
        raise NumericalError("images contain NaN or infinite pixels; the model is broken")
    pixels: np.ndarray = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels


def check_scale(scale: int, name: str = "scale") -> int:
    """An upscale factor: 1..MAX_SCALE."""
    return check_int(name, scale, 1, MAX_SCALE)


def grid_rows(n: int, cols: int) -> int:
    """Rows of a grid of `n` images, `cols` (>= 1) to a row."""
    return -(-n // check_int("cols", cols, 1))


def grid_size(
    rows: int, cols: int, height: int = 28, width: int = 28, padding: int = 2, scale: int = 1
) -> tuple[int, int]:
    """(H, W) of the grid `tile` makes, after checking rows, cols >= 1, 0 <= padding <=
    MAX_PADDING, 1 <= scale <= MAX_SCALE and the size against MAX_GRID_PIXELS."""
    rows, cols = check_int("rows", rows, 1), check_int("cols", cols, 1)
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    padding, scale = check_int("padding", padding, 0, MAX_PADDING), check_scale(scale)
    grid_h = (rows * (height + padding) + padding) * scale
    grid_w = (cols * (width + padding) + padding) * scale
    if grid_h * grid_w > MAX_GRID_PIXELS:
        raise InvalidArgumentError(
            f"a {rows:,}x{cols:,} grid at scale {scale} is {grid_w:,}x{grid_h:,} pixels, above "
            f"the cap of {MAX_GRID_PIXELS:,}; use fewer rows/cols or a smaller --scale"
        )
    return grid_h, grid_w


def tile(images: Any, rows: int, cols: int, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile up to rows*cols images row by row into one uint8 (H, W) grid on a black background,
    `padding` pixels between and around them, every pixel repeated `scale` times each way."""
    pixels = to_uint8(images)  # (N, h, w)
    n, h, w = pixels.shape
    grid_size(rows, cols, h, w, padding, scale)  # every rule, and the scaled size's cap
    rows, cols, padding = int(rows), int(cols), int(padding)
    if n > rows * cols:
        raise InvalidArgumentError(f"{n} images do not fit a {rows}x{cols} grid")
    grid_h, grid_w = grid_size(rows, cols, h, w, padding, 1)
    grid = np.zeros((grid_h, grid_w), dtype=np.uint8)
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return upscale(grid, scale)


def upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Repeat every pixel of uint8 (..., H, W) `scale` times each way (nearest neighbour)."""
    scale = check_scale(scale)
    pixels = as_array("pixels", pixels)
    if pixels.dtype != np.uint8 or pixels.ndim < 2:
        raise InvalidArgumentError(
            f"pixels must be uint8 (..., H, W), got {pixels.dtype} of shape {pixels.shape}"
        )
    if scale == 1:
        return pixels
    return np.repeat(np.repeat(pixels, scale, axis=-2), scale, axis=-1)


def _grey(pixels: Any) -> np.ndarray:
    array = as_array("picture", pixels)
    if array.dtype != np.uint8 or array.ndim != 2 or 0 in array.shape:
        raise InvalidArgumentError(
            f"a picture must be uint8 (H, W), got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array)


# zlib level 3, not Pillow's 6: a 5x5 grid encodes in 0.67 ms instead of 1.12 ms for 6.5% more
# bytes (9.7 KB against 9.1 KB), and vae-serve's /samples.png is mostly this encoding.
PNG_COMPRESS_LEVEL = 3


def png_bytes(grid: Any) -> bytes:
    """A uint8 (H, W) greyscale array encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(_grey(grid), mode="L").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def check_frame_ms(frame_ms: int) -> int:
    """A GIF frame's duration: 1..MAX_FRAME_MS milliseconds."""
    return check_int("frame duration (ms)", frame_ms, 1, MAX_FRAME_MS)


def gif_bytes(frames: Any, *, frame_ms: int = 100, loop: bool = True) -> bytes:
    """uint8 frames (N, H, W) encoded as an animated greyscale GIF, `frame_ms` per frame,
    looping forever when `loop`."""
    check_frame_ms(frame_ms)
    array = as_array("frames", frames)
    if array.ndim != 3 or array.shape[0] < 1:
        raise InvalidArgumentError(f"GIF frames must be uint8 (N, H, W), got {array.shape}")
    pictures = [Image.fromarray(_grey(f), mode="L") for f in array]
    buffer = io.BytesIO()
    extra = {"loop": 0} if loop else {}
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=frame_ms,
        optimize=False,
        **extra,
    )
    return buffer.getvalue()


def save_png(grid: Any, path: Path | str) -> None:
    """Write a uint8 (H, W) greyscale array as a PNG file, atomically."""
    write_file(Path(path), png_bytes(grid))


def save_gif(frames: Any, path: Path | str, *, frame_ms: int = 100, loop: bool = True) -> None:
    """Write uint8 frames (N, H, W) as an animated GIF file, atomically (see `gif_bytes`)."""
    write_file(Path(path), gif_bytes(frames, frame_ms=frame_ms, loop=loop))


def image_file_names(prefix: str, count: int, start: int = 0) -> list[str]:
    """`{prefix}_{index}.png` for `count` images from `start`, zero-padded to at least 5 digits
    (as wide as the largest index needs), so they sort in order."""
    digits = max(5, len(str(max(start + count - 1, 0))))
    return [f"{prefix}_{i:0{digits}d}.png" for i in range(start, start + count)]
