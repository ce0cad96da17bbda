"""The exception hierarchy: every failure a user can cause is a VaeError with a one-line message."""

from __future__ import annotations


class VaeError(Exception):
    """Base of every error the toolkit raises on purpose; the CLIs print its message as one line."""


class DataError(VaeError):
    """Input data (an IDX file, an image, a data folder) is missing or malformed."""


class ModelFileError(VaeError):
    """An .onnx file, a manifest or a checkpoint is missing, corrupt or not what was expected."""


class OutputError(VaeError):
    """An output cannot be written (missing or read-only folder, existing file without --force)."""


class InvalidArgumentError(VaeError, ValueError):
    """A parameter is outside its allowed range; the message names it, its value and the range."""


class NumericalError(VaeError):
    """A computation produced non-finite values (a NaN loss, a graph emitting NaN)."""
