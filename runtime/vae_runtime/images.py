"""Image grids and image files: float pixels in [0, 1] -> uint8 -> tiled grid -> PNG."""

from __future__ import annotations

import contextlib
import errno
import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .errors import InvalidArgumentError, NumericalError, OutputError
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


def upscale(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Repeat every pixel of uint8 (..., H, W) `scale` times each way (nearest neighbour)."""
    if scale < 1:
        raise InvalidArgumentError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return pixels
    return np.repeat(np.repeat(pixels, scale, axis=-2), scale, axis=-1)


def save_gif(frames: np.ndarray, path: Path, *, frame_ms: int = 100, loop: bool = True) -> None:
    """Write uint8 frames (N, H, W) as an animated greyscale GIF, atomically; `frame_ms` per
    frame, looping forever when `loop`."""
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise InvalidArgumentError(f"GIF frames must be uint8 (N, H, W), got {frames.shape}")
    if frame_ms < 1:
        raise InvalidArgumentError(f"frame duration must be >= 1 ms, got {frame_ms}")
    pictures = [Image.fromarray(np.ascontiguousarray(f), mode="L") for f in frames]
    extra = {"loop": 0} if loop else {}
    with atomic_output(Path(path)) as tmp:
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=frame_ms,
            optimize=False,
            **extra,
        )


def save_image_files(
    images: np.ndarray,
    directory: Path,
    *,
    prefix: str,
    start: int = 0,
    digits: int = 5,
    scale: int = 1,
) -> list[Path]:
    """Write each image of `images` ((N, 1, 28, 28) floats or uint8 (N, 28, 28)) as its own PNG
    `directory/{prefix}_{index}.png`, the index counted from `start`, zero-padded to `digits`."""
    pixels = upscale(to_uint8(images), scale)  # (N, 28*scale, 28*scale)
    paths = []
    for offset, image in enumerate(pixels):
        path = Path(directory) / f"{prefix}_{start + offset:0{digits}d}.png"
        save_png(image, path)
        paths.append(path)
    return paths


class NpyWriter:
    """Stream an array of a known shape into an .npy file batch by batch, so memory stays flat:
    the header first (numpy.lib.format), then each batch's bytes appended in C order. Written to
    a temporary file, renamed into place only when all rows have arrived.

    >>> with NpyWriter(path, (n, 1, 28, 28)) as npy:
    ...     for batch in batches:
    ...         npy.write(batch)
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype | type = np.float32):
        self.path = Path(path)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._stack = contextlib.ExitStack()
        self._file: BinaryIO | None = None

    def __enter__(self) -> NpyWriter:
        from numpy.lib import format as npy_format  # numpy loads this submodule lazily

        # Entered on a stack of its own, handed to self only once all of it worked: a failure
        # here (a disk too small) unwinds it at once and leaves no temporary file behind.
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(self.path))
            self._file = stack.enter_context(open(tmp, "wb"))
            header = {
                "descr": npy_format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self.shape,
            }
            npy_format.write_array_header_1_0(self._file, header)
            self._reserve(self._file.tell() + math.prod(self.shape) * self.dtype.itemsize)
            self._stack = stack.pop_all()
        return self

    def _reserve(self, size: int) -> None:
        # Allocating the whole file up front is one cheap extent allocation instead of one per
        # write (several times faster for 300 MB on ext4), and a full disk fails here, at once.
        assert self._file is not None
        # Refuse what cannot fit before allocating: posix_fallocate takes blocks until the disk
        # is full before it fails, which for a moment starves every other writer of that disk.
        stats = os.statvfs(self.path.parent)
        free = stats.f_bavail * stats.f_frsize
        if size > free:
            raise OutputError(
                f"{self.path}: {size:,} bytes do not fit on the disk ({free:,} free); "
                "free some space or write fewer samples"
            )
        try:
            os.posix_fallocate(self._file.fileno(), 0, size)
        except AttributeError:  # not on this platform
            pass
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OutputError(
                    f"{self.path}: {size:,} bytes do not fit on the disk; free some space"
                ) from None
            # EOPNOTSUPP and friends: a file system without preallocation just grows the file

    def write(self, batch: np.ndarray) -> None:
        """Append `batch` (B, *shape[1:]) of the writer's dtype."""
        assert self._file is not None, "use NpyWriter in a with-block"
        if batch.shape[1:] != self.shape[1:] or batch.dtype != self.dtype:
            raise InvalidArgumentError(
                f"batch {batch.shape} {batch.dtype} does not fit {self.shape} {self.dtype}"
            )
        if self.rows + batch.shape[0] > self.shape[0]:
            raise InvalidArgumentError(f"more than the {self.shape[0]} rows declared")
        self._file.write(memoryview(np.ascontiguousarray(batch)).cast("B"))
        self.rows += batch.shape[0]

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None and self.rows != self.shape[0]:
            # An incomplete array is an error: the temporary file goes, the target stays as it was.
            try:
                raise InvalidArgumentError(
                    f"{self.path}: {self.rows} of {self.shape[0]} declared rows were written"
                )
            except InvalidArgumentError as incomplete:
                if not self._stack.__exit__(type(incomplete), incomplete, incomplete.__traceback__):
                    raise
        return bool(self._stack.__exit__(exc_type, exc, tb))
