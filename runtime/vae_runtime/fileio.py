"""Crash-safe output: write to a temporary file beside the target, rename into place on success."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


def check_output_dir(directory: Path) -> None:
    """Raise OutputError unless `directory` exists, is a folder and is writable."""
    if not directory.exists():
        raise OutputError(f"output folder {directory} does not exist; create it first")
    if not directory.is_dir():
        raise OutputError(f"output path {directory} is not a folder")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {directory} is not writable; choose another folder")


def check_output_file(path: Path, *, force: bool = True) -> None:
    """Raise OutputError if `path` cannot be written (folder missing or read-only, or it exists
    and `force` is false)."""
    check_output_dir(path.parent)
    if path.is_dir():
        raise OutputError(f"output path {path} is a folder, expected a file name")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists; pass --force to replace it")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block
    succeeds, remove it otherwise, so `path` is never left half-written."""
    path = Path(path)
    check_output_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write into {path.parent}: {exc.strerror}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
