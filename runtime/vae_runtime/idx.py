"""The IDX format of MNIST (and Fashion-MNIST, KMNIST): read and write uint8 arrays, gzip or raw.

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, one
big-endian uint32 per dimension, then the data in C order. MNIST's magic numbers are therefore
2051 (0x00000803) for images (N, 28, 28) and 2049 (0x00000801) for labels (N,).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError, InvalidArgumentError, as_array, check_int, check_path
from .fileio import write_file

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_BYTES = (1 << 32) - 1  # 4 GiB: no real IDX file is larger; a header claiming more is corrupt
_CHUNK = 1 << 24  # bytes per read while filling the array


def read_idx(path: Path | str, magic: int | None = None, *, limit: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a uint8 array of the shape its header gives,
    or only its first `limit` entries along the first axis.

    The header is checked against the file's real size before anything is allocated (for gzip,
    the decompressed size its trailer records), so a small file whose header claims millions of
    images is refused at once. `magic`, when given (IMAGES_MAGIC or LABELS_MAGIC), must match.
    Raises DataError naming the file and the problem; never returns a partial array.
    """
    path = check_path("IDX path", path)
    if limit is not None:
        check_int("count", limit, 0)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read forever
            raise DataError(f"{path}: is not a regular file, expected an IDX file")
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            if compressed:
                raw.seek(-4, os.SEEK_END)
                size = struct.unpack("<I", raw.read(4))[0]  # decompressed size, mod 2^32
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw) as f:
                    return _read(f, path, magic, limit, size, wraps=True)
            raw.seek(0)
            return _read(raw, path, magic, limit, os.fstat(raw.fileno()).st_size, wraps=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (OSError, EOFError, zlib.error, struct.error) as exc:  # bad CRC, truncated stream
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None


def _read(
    f: io.BufferedIOBase,
    path: Path,
    magic: int | None,
    limit: int | None,
    size: int,
    *,
    wraps: bool,
) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", head)
    if zero != 0:
        raise DataError(f"{path}: not an IDX file (first bytes {head.hex()})")
    if dtype != _UINT8:
        raise DataError(f"{path}: IDX data type 0x{dtype:02x} unsupported, expected 0x08 (uint8)")
    found_magic = (dtype << 8) | ndim
    if magic is not None and found_magic != magic:
        raise DataError(f"{path}: IDX magic {found_magic}, expected {magic}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    dims_bytes = f.read(4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (expected {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", dims_bytes)
    expected = math.prod(shape)
    if expected > _MAX_BYTES:
        raise DataError(
            f"{path}: IDX header declares {expected:,} bytes of data, more than any "
            "IDX file holds; the file is corrupt"
        )
    total = 4 + 4 * ndim + expected
    if (total % 2**32 if wraps else total) != size:
        holds = size - 4 - 4 * ndim
        state = "longer than its header says" if 0 < total < size and not wraps else "truncated"
        raise DataError(
            f"{path}: {state}: header {list(shape)} needs {expected:,} data bytes, the "
            f"{'gzip stream' if wraps else 'file'} holds {max(holds, 0):,}"
        )
    rows = shape[0] if limit is None else min(limit, shape[0])
    out = np.empty((rows, *shape[1:]), dtype=np.uint8)
    view = out.reshape(-1).data.cast("B")  # the array's own memory, filled in place
    done = 0
    while done < len(view):
        got = f.readinto(view[done : done + _CHUNK])
        if not got:  # pragma: no cover  (the size was checked: only a file shrinking meanwhile)
            raise DataError(f"{path}: truncated: {done:,} of {len(view):,} data bytes")
        done += got
    if limit is None and f.read(1):  # pragma: no cover  (likewise: a file growing meanwhile)
        raise DataError(f"{path}: longer than its header {list(shape)} says")
    return out


def write_idx(path: Path | str, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzip-compressed if `compress`, default: when the name ends in
    .gz), atomically."""
    path = check_path("IDX path", path)
    array = as_array("array", array)  # (ascontiguousarray would make a 0-d array 1-d)
    if array.dtype != np.uint8:
        raise InvalidArgumentError(f"IDX writing supports uint8 arrays, got {array.dtype}")
    if not 1 <= array.ndim <= 255 or max(array.shape) >= 2**32:
        raise InvalidArgumentError(
            f"IDX holds 1 to 255 dimensions of fewer than 2^32 each, got {array.shape}"
        )
    header = struct.pack(">HBB", 0, _UINT8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + np.ascontiguousarray(array).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    write_file(path, gzip.compress(payload, mtime=0) if compress else payload)
