"""The IDX format of MNIST (and Fashion-MNIST, KMNIST): read and write uint8 arrays, gzip or raw.

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, one
big-endian uint32 per dimension, then the data in C order. MNIST's magic numbers are therefore
2051 (0x00000803) for images (N, 28, 28) and 2049 (0x00000801) for labels (N,).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError
from .fileio import atomic_output

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_BYTES = 1 << 32  # 4 GiB: no real IDX file is larger; a header claiming more is corrupt


def read_idx(path: Path | str, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a uint8 array of the shape its header gives.

    `magic`, when given (IMAGES_MAGIC or LABELS_MAGIC), must match the file's. Raises DataError
    naming the file and the problem for anything malformed; never returns a partial array.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw) as f:
                    return _read(f, path, magic)
            return _read(raw, path, magic)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except (OSError, EOFError, zlib.error) as exc:  # gzip: bad CRC, truncated stream, bad header
        raise DataError(f"{path}: corrupt gzip data ({exc})") from None


def _read(f: BinaryIO, path: Path, magic: int | None) -> np.ndarray:
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
    expected = 1
    for d in shape:
        expected *= d
    if expected > _MAX_BYTES:
        raise DataError(
            f"{path}: IDX header declares {expected:,} bytes of data, more than any "
            "IDX file holds; the file is corrupt"
        )
    data = f.read(expected + 1)  # one byte more detects trailing garbage
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"{path}: {state}: header {list(shape)} needs {expected:,} data bytes, "
            f"found {len(data):,}{'+' if len(data) > expected else ''}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def write_idx(path: Path | str, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write a uint8 array as IDX (gzip-compressed if `compress`, default: when the name ends in
    .gz), atomically."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise DataError(f"IDX writing supports uint8 arrays, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = struct.pack(">HBB", 0, _UINT8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    with atomic_output(path) as tmp:
        tmp.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
