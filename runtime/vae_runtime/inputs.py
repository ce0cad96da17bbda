"""Reading the user's images: PNG/JPEG/... files of any size or mode, or IDX files, as MNIST-like
uint8 (N, 28, 28) arrays, white ink on black.

How an image file becomes a 28x28 input (CONVERSION, which the commands' --help repeats):
  1. Images above MAX_INPUT_PIXELS are refused from their header, before any pixel is decoded
     (a decompression bomb is never decompressed). Only the first frame of an animation is read.
  2. Transparent pixels are laid over white; the result is converted to 8-bit greyscale (L),
     16-bit images scaled to 8 bits.
  3. If the border is mostly light (mean above 127), the image is inverted, so that ink is white
     on black as in MNIST.
  4. An image of exactly 28x28 is then used as it is. Any other size is fitted like MNIST was
     made: cropped to its ink (pixels above 30), padded to a square, resized (Lanczos) into a
     20x20 box, contrast stretched so the brightest pixel is 255, and placed in a 28x28 frame
     with its centre of mass at the centre. A blank image is simply resized.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, InvalidArgumentError, check_int, check_path
from .idx import IMAGES_MAGIC, read_idx

MAX_INPUT_PIXELS = 1 << 24  # 16 Mpx (e.g. 4096x4096): far above any digit photo, far below a bomb
MAX_INPUTS = 1 << 20  # images read in one call: 800 MB as uint8
CONVERSION = (
    "Image files (PNG, JPEG, ...; at most 16 Mpx) are converted to MNIST's form: transparency "
    "laid over white, greyscale (L), inverted if the border is light (so ink is white on "
    "black); a 28x28 image is then used as it is, any other size is cropped to its ink, fitted "
    "into 20x20 and centred by mass in 28x28. IDX files (MNIST's format, gzip or raw) are read "
    "as they are."
)
_INK = 30  # grey level above which a pixel counts as ink when cropping (after inversion)
_BOX = 20  # MNIST's digits fill a 20x20 box inside the 28x28 frame
_SIDE = 28
_IDX_STARTS = (b"\x1f\x8b", b"\x00\x00\x08")  # gzip, or an uint8 IDX header


def check_limit(limit: int) -> int:
    """How many images one call may read: 1..MAX_INPUTS."""
    return check_int("count", limit, 1, MAX_INPUTS)


def load_inputs(paths: Sequence[Path | str], limit: int) -> np.ndarray:
    """Read images from `paths` in order (image files, or IDX files of many images each) until
    `limit` are collected: uint8 (N, 28, 28), 1 <= N <= limit. Files past the limit are not read,
    and of an IDX file only the images needed."""
    check_limit(limit)
    if isinstance(paths, str | bytes) or not isinstance(paths, Sequence):
        raise InvalidArgumentError(f"paths must be a list of paths, got {type(paths).__name__}")
    if not paths:
        raise InvalidArgumentError("no input images given")
    chunks: list[np.ndarray] = []
    taken = 0
    for path in (check_path("input path", p) for p in paths):
        if taken >= limit:
            break
        _check_regular(path)
        if _is_idx(path):
            images = read_idx(path, IMAGES_MAGIC, limit=limit - taken)  # (n, h, w)
            if images.shape[1:] != (_SIDE, _SIDE):
                raise DataError(f"{path}: IDX images are {images.shape[1:]}, expected (28, 28)")
            if images.shape[0] == 0:
                raise DataError(f"{path}: IDX file holds no images")
        else:
            images = read_image(path)[None]  # (1, 28, 28)
        chunks.append(images)
        taken += chunks[-1].shape[0]
    return np.ascontiguousarray(np.concatenate(chunks))


def read_image(path: Path | str) -> np.ndarray:
    """One image file -> uint8 (28, 28), white ink on black (the module docstring's steps)."""
    path = check_path("image path", path)
    _check_regular(path)
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice it; make that a refusal too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > MAX_INPUT_PIXELS:
                    raise DataError(
                        f"{path}: {width}x{height} pixels is above the input cap of "
                        f"{MAX_INPUT_PIXELS:,} pixels; refused without decoding it"
                    )
                image.seek(0)
                grey = _to_grey(image)
        except UnidentifiedImageError:
            raise DataError(f"{path}: not an image (PNG, JPEG, ...) nor an IDX file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(
                f"{path}: image is far too large (a decompression bomb?); refused without "
                f"decoding it (cap {MAX_INPUT_PIXELS:,} pixels)"
            ) from None
        except OSError as exc:  # unreadable (gone since the check, no permission) or truncated
            reason = exc.strerror or " ".join(str(exc).split())[:120]
            raise DataError(f"{path}: cannot read the image: {reason}") from None
        except (ValueError, SyntaxError, struct.error) as exc:  # corrupt pixel data or header
            raise DataError(f"{path}: corrupt image data ({exc})") from None
    return fit_mnist(grey)


def _check_regular(path: Path) -> None:
    """Refuse what is not a regular file before opening it (opening a FIFO blocks forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder, expected an image or IDX file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is not a regular file, expected an image or IDX file")


def _is_idx(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            start = f.read(3)
    except OSError:  # pragma: no cover  (checked just before: gone meanwhile, or not root)
        return False  # read_image reports the problem in its words
    return any(start.startswith(magic) for magic in _IDX_STARTS)


def _to_grey(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W) greyscale, transparency laid over white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # A float (TIFF) image may hold NaN or inf: those pixels count as background.
        with np.errstate(invalid="ignore"):
            values = np.asarray(image, dtype=np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        top = 65535.0 if values.max(initial=0) > 255 else 255.0
        return np.rint(np.clip(values / top, 0, 1) * 255).astype(np.uint8)
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("L"))
    return np.asarray(image.convert("L"))


def fit_mnist(grey: np.ndarray) -> np.ndarray:
    """uint8 (H, W) greyscale of any size -> uint8 (28, 28) white ink on black (steps 3 and 4)."""
    pixels = np.asarray(grey, dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    if pixels.shape == (_SIDE, _SIDE):
        return np.ascontiguousarray(pixels)
    ys, xs = np.nonzero(pixels > _INK)
    if ys.size == 0:  # blank: nothing to centre
        return np.asarray(Image.fromarray(pixels).resize((_SIDE, _SIDE), Image.Resampling.BOX))
    ink = pixels[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(ink.shape)
    square = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - ink.shape[0]) // 2, (side - ink.shape[1]) // 2
    square[top : top + ink.shape[0], left : left + ink.shape[1]] = ink
    box = np.asarray(
        Image.fromarray(square).resize((_BOX, _BOX), Image.Resampling.LANCZOS), dtype=np.float64
    )
    if box.max() > 0:
        box *= 255.0 / box.max()
    # Centre of mass to the frame's centre, clamped so the 20x20 box stays inside the frame.
    mass = box.sum()
    cy = (box.sum(axis=1) @ np.arange(_BOX)) / mass
    cx = (box.sum(axis=0) @ np.arange(_BOX)) / mass
    top = int(np.clip(round(_SIDE / 2 - 0.5 - cy), 0, _SIDE - _BOX))
    left = int(np.clip(round(_SIDE / 2 - 0.5 - cx), 0, _SIDE - _BOX))
    frame = np.zeros((_SIDE, _SIDE), dtype=np.uint8)
    frame[top : top + _BOX, left : left + _BOX] = np.rint(np.clip(box, 0, 255)).astype(np.uint8)
    return frame
