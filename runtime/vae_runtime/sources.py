"""vae-score's inputs as a stream: image files, folders of them, `.npy` arrays and IDX files, read
in order in chunks, each image with its source and its index among all the inputs.

Order: the paths as given; a folder's image and `.npy` files (IMAGE_SUFFIXES, `.npy`) sorted by
name, not recursively. Sources: an image file's path; an array's image `path:i` (i counted from 0
in that file). The index (0, 1, ... over all inputs) is what the scorer draws image j's noise
from, so a chunked or sharded run (`vae-score --ray`) gives every image the same draws. Image
files are converted as `inputs.read_image` converts them (vae-reconstruct's conversion); IDX and
`.npy` images are used as they are: a `.npy` holds uint8 (0-255) or float (0-1) images of shape
(N, 28, 28) or (N, 1, 28, 28), read through a memory map, a chunk at a time.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, InvalidArgumentError, check_path
from .idx import IMAGES_MAGIC, read_idx
from .inputs import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
NPY_SUFFIX = ".npy"
_NPY_MAGIC = b"\x93NUMPY"
_IDX_STARTS = (b"\x1f\x8b", b"\x00\x00\x08")  # gzip, or an uint8 IDX header
_SIDE = 28


@dataclass(frozen=True)
class Source:
    """One input file: its kind ("image", "npy" or "idx") and how many images it holds."""

    path: Path
    kind: str
    count: int


def list_sources(paths: Sequence[Path | str]) -> list[Source]:
    """The input files of `paths` in order (folders expanded), each checked from its header
    alone: DataError for a missing path, a folder without images, a malformed array."""
    if isinstance(paths, str | bytes) or not isinstance(paths, Sequence):
        raise InvalidArgumentError(f"paths must be a list of paths, got {type(paths).__name__}")
    if not paths:
        raise InvalidArgumentError("no input images given")
    files: list[Path] = []
    for given in paths:
        path = check_path("input path", given)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise DataError(f"{path}: no such file or folder") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot be read: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in (*IMAGE_SUFFIXES, NPY_SUFFIX) and p.is_file()
            )
            if not found:
                raise DataError(
                    f"{path}: no image ({', '.join(IMAGE_SUFFIXES)}) or {NPY_SUFFIX} files in "
                    "this folder"
                )
            files.extend(found)
        elif stat.S_ISREG(mode):
            files.append(path)
        else:
            raise DataError(f"{path}: is not a regular file, expected images")
    return [_source(path) for path in files]


def _source(path: Path) -> Source:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror}") from None
    if path.suffix.lower() == NPY_SUFFIX or head.startswith(_NPY_MAGIC):
        return Source(path, "npy", int(_npy(path).shape[0]))
    if head.startswith(_IDX_STARTS):
        images = read_idx(path, IMAGES_MAGIC)  # (n, h, w): MNIST's test set is 7.8 MB
        if images.shape[1:] != (_SIDE, _SIDE):
            raise DataError(f"{path}: IDX images are {images.shape[1:]}, expected (28, 28)")
        return Source(path, "idx", int(images.shape[0]))
    return Source(path, "image", 1)


def _npy(path: Path) -> np.ndarray:
    """The memory-mapped array of a .npy of images, its shape and dtype checked."""
    try:
        array: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None
    shape_ok = array.ndim == 3 or (array.ndim == 4 and array.shape[1] == 1)
    if not shape_ok or array.shape[-2:] != (_SIDE, _SIDE):
        raise DataError(f"{path}: .npy of shape {array.shape}, expected (N, 28, 28) images")
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise DataError(f"{path}: .npy of {array.dtype}, expected uint8 (0-255) or float (0-1)")
    return array


def iter_images(
    sources: Sequence[Source], limit: int, chunk: int = 1024
) -> Iterator[tuple[np.ndarray, list[str], int]]:
    """(images, their sources, the index of the first) for the first `limit` images of
    `sources`, at most `chunk` at a time. Images: uint8 (B, 28, 28), or a float .npy's
    float32 (B, 1, 28, 28) in [0, 1] (checked by the scorer)."""
    start = 0
    pending: list[np.ndarray] = []  # single image files, gathered into one chunk
    names: list[str] = []
    for source in sources:
        if start + len(names) >= limit:
            break
        if source.kind == "image":
            pending.append(read_image(source.path))
            names.append(str(source.path))
            if len(names) == chunk:
                yield np.stack(pending), names, start
                start, pending, names = start + len(names), [], []
            continue
        if names:
            yield np.stack(pending), names, start
            start, pending, names = start + len(names), [], []
        take = min(source.count, limit - start)
        if source.kind == "idx":
            array = read_idx(source.path, IMAGES_MAGIC, limit=take)
        else:
            array = _npy(source.path)
        for offset in range(0, take, chunk):
            end = min(take, offset + chunk)
            images = np.asarray(array[offset:end])
            if images.dtype.kind == "f":
                images = images.astype(np.float32).reshape(-1, 1, _SIDE, _SIDE)
            yield images, [f"{source.path}:{i}" for i in range(offset, end)], start
            start += end - offset
    if names:
        yield np.stack(pending), names, start
