"""Image grids and image files: float pixels in [0, 1] -> uint8 -> tiled grid -> PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidArgumentError, NumericalError
from .fileio import atomic_output

MAX_GRID_PIXELS = 1 << 26  # 64 Mpx (64 MiB as uint8): larger grids are refused before allocating


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1], shape (N, 1, 28, 28) or (N, 28, 28), -> uint8 (N, 28, 28)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.reshape(images.shape[0], images.shape[-2], images.shape[-1])
    if not np.all(np.isfinite(images)):
        raise NumericalError("images contain NaN or infinite pixels; the model is broken")
    pixels = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels.reshape(pixels.shape[0], pixels.shape[-2], pixels.shape[-1])


def grid_size(
    rows: int, cols: int, height: int = 28, width: int = 28, padding: int = 2, scale: int = 1
) -> tuple[int, int]:
    """(H, W) of the grid `tile` would make; raises InvalidArgumentError past MAX_GRID_PIXELS."""
    for name, value, low in (("rows", rows, 1), ("cols", cols, 1), ("scale", scale, 1)):
        if value < low:
            raise InvalidArgumentError(f"{name} must be >= {low}, got {value}")
    if padding < 0:
        raise InvalidArgumentError(f"padding must be >= 0, got {padding}")
    grid_h = (rows * (height + padding) + padding) * scale
    grid_w = (cols * (width + padding) + padding) * scale
    if grid_h * grid_w > MAX_GRID_PIXELS:
        raise InvalidArgumentError(
            f"a {rows}x{cols} grid at scale {scale} is {grid_w}x{grid_h} pixels, above the cap of "
            f"{MAX_GRID_PIXELS:,}; use fewer rows/cols or a smaller --scale"
        )
    return grid_h, grid_w


def tile(images: np.ndarray, rows: int, cols: int, padding: int = 2, scale: int = 1) -> np.ndarray:
    """Tile up to rows*cols images row by row into one uint8 (H, W) grid on a black background,
    `padding` pixels between and around them, every pixel repeated `scale` times each way."""
    pixels = to_uint8(images)  # (N, h, w)
    n, h, w = pixels.shape
    if n > rows * cols:
        raise InvalidArgumentError(f"{n} images do not fit a {rows}x{cols} grid")
    grid_h, grid_w = grid_size(rows, cols, h, w, padding, 1)
    grid_size(rows, cols, h, w, padding, scale)  # check the scaled size against the cap
    grid = np.zeros((grid_h, grid_w), dtype=np.uint8)
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return grid


def save_png(grid: np.ndarray, path: Path) -> None:
    """Write a uint8 (H, W) greyscale array as PNG, atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(grid), mode="L").save(tmp, format="PNG")
