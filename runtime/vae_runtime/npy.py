"""Streaming .npy files: an array of known shape written batch by batch, memory flat in N.

The file is staged through `fileio.Outputs` like every other output, so a stream that stops
early (an error, a full disk, Ctrl-C) leaves nothing, and a complete one appears at once.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from .errors import InvalidArgumentError, OutputError, as_array, check_int, check_path
from .fileio import Outputs, naming

_MAX_DIM = 2**62  # sizes and bytes of an .npy that numpy can still read back


class NpyWriter:
    """Stream an array of a known shape into an .npy file batch by batch, so memory stays flat:
    the header first (numpy.lib.format), then each batch's bytes appended in C order. The file is
    staged and replaces `path` only once all rows have arrived.

    >>> with NpyWriter(path, (n, 1, 28, 28)) as npy:
    ...     for batch in batches:
    ...         npy.write(batch)

    Inside a command's own `Outputs`, pass it as `outputs`: the file is then staged there and
    committed with the command's other files.
    """

    def __init__(
        self,
        path: Path | str,
        shape: Sequence[int],
        dtype: np.dtype[Any] | type = np.float32,
        *,
        outputs: Outputs | None = None,
    ) -> None:
        self.path = check_path("path", path)
        if isinstance(shape, str | bytes) or not isinstance(shape, Sequence) or not shape:
            raise InvalidArgumentError(f"shape must be a sequence of sizes, got {shape!r}")
        self.shape = tuple(check_int("array size", d, 0, _MAX_DIM) for d in shape)
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise InvalidArgumentError(f"dtype {dtype!r} is not a numpy dtype") from None
        if self.dtype.kind not in "biuf":
            raise InvalidArgumentError(f"dtype must be numeric, got {self.dtype}")
        if math.prod(d for d in self.shape if d) * self.dtype.itemsize > _MAX_DIM:
            raise InvalidArgumentError(f"an array of shape {self.shape} is larger than numpy makes")
        self.rows = 0
        self._outputs = outputs
        self._own: Outputs | None = None
        self._file: BinaryIO | None = None

    def __enter__(self) -> NpyWriter:
        from numpy.lib import format as npy_format  # numpy loads this submodule lazily

        outputs = self._outputs
        if outputs is None:
            outputs = self._own = Outputs([self.path], force=True).__enter__()
        try:
            self._file = outputs.open(self.path)
            header = {
                "descr": npy_format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": self.shape,
            }
            with naming(self.path):
                npy_format.write_array_header_1_0(self._file, header)
                self._reserve(self._file.tell() + math.prod(self.shape) * self.dtype.itemsize)
        except BaseException as exc:
            if self._own is not None:
                self._own.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _reserve(self, size: int) -> None:
        # Allocating the whole file up front is one cheap extent allocation instead of one per
        # write (several times faster for 300 MB on ext4), and a full disk fails here, at once.
        # What cannot fit is refused before allocating: posix_fallocate takes blocks until the
        # disk is full before it fails, which for a moment starves every other writer.
        assert self._file is not None
        stats = os.statvfs(self._file.name)
        free = stats.f_bavail * stats.f_frsize
        if size > free:
            raise OutputError(
                f"{self.path}: {size:,} bytes do not fit on the disk ({free:,} free); "
                "free some space or write fewer samples"
            )
        try:
            os.posix_fallocate(self._file.fileno(), 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            # a file system without preallocation just grows the file as it is written

    def write(self, batch: np.ndarray) -> None:
        """Append `batch` (B, *shape[1:]) of the writer's dtype."""
        if self._file is None:
            raise InvalidArgumentError("NpyWriter.write outside its with-block")
        batch = as_array("batch", batch)
        if (
            batch.ndim != len(self.shape)
            or batch.shape[1:] != self.shape[1:]
            or batch.dtype != self.dtype
        ):
            raise InvalidArgumentError(
                f"batch {batch.shape} {batch.dtype} does not fit {self.shape} {self.dtype}"
            )
        if self.rows + batch.shape[0] > self.shape[0]:
            raise InvalidArgumentError(f"more than the {self.shape[0]} rows declared")
        if batch.size:  # (an empty view cannot be cast to bytes; it has none to write)
            with naming(self.path):
                self._file.write(np.ascontiguousarray(batch).data.cast("B"))
        self.rows += batch.shape[0]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        own, self._own = self._own, None
        try:
            if exc is None and self.rows != self.shape[0]:
                raise InvalidArgumentError(  # an incomplete array is never committed
                    f"{self.path}: {self.rows} of {self.shape[0]} declared rows were written"
                )
            if exc is None and own is not None:
                own.commit()
        except BaseException as error:
            if own is not None:
                own.__exit__(type(error), error, error.__traceback__)
            raise
        if own is not None:
            own.__exit__(exc_type, exc, tb)
