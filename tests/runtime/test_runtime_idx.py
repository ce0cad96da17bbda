"""The IDX format: round trips, every malformed header, sizes checked before allocating, limits."""

from __future__ import annotations

import gzip
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vae_runtime.errors import DataError, InvalidArgumentError
from vae_runtime.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    compress=st.booleans(),
    data=st.data(),
)
def test_idx_round_trip(
    tmp_path: Path, shape: list[int], compress: bool, data: st.DataObject
) -> None:
    n = int(np.prod(shape))
    values = data.draw(st.binary(min_size=n, max_size=n))
    array = np.frombuffer(values, dtype=np.uint8).reshape(shape)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, array)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, 4 + 12 + 2 * 3 * 3 - 1), compress=st.booleans())
def test_truncated_idx_is_a_data_error(tmp_path: Path, cut: int, compress: bool) -> None:
    full = idx_bytes(np.arange(18, dtype=np.uint8).reshape(2, 3, 3))
    raw = full[:cut]
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match=r"cut\.gz"):
        read_idx(path, IMAGES_MAGIC)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=0, max_size=64))
def test_arbitrary_bytes_never_escape_as_other_errors(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(junk)
    try:
        out = read_idx(path, IMAGES_MAGIC)
    except DataError as exc:
        message = str(exc)
    else:  # only a well-formed images header with exactly the right length gets through
        assert out.dtype == np.uint8
        assert out.ndim == 3
        return
    assert "\n" not in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x00\x08", "too short"),
        (b"\x01\x02\x08\x03" + b"\x00" * 12, "not an IDX file"),
        (b"\x00\x00\x0d\x03" + b"\x00" * 12, "data type"),
        (idx_bytes(np.zeros(4, np.uint8)), "magic 2049, expected 2051"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (idx_bytes(np.zeros((2, 3, 3), np.uint8)) + b"x", "longer than its header"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 1 << 20, 1 << 12, 1 << 12), "corrupt"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
    ],
)
def test_malformed_idx_names_file_and_problem(tmp_path: Path, raw: bytes, match: str) -> None:
    path = tmp_path / "bad-images"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_labels_magic_is_checked(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="magic 2051, expected 2049"):
        read_idx(tmp_path / "l", LABELS_MAGIC)


def test_a_small_file_claiming_millions_of_images_is_refused_before_allocating(
    tmp_path: Path,
) -> None:
    # 4 million 28x28 images (3 GB) declared by a 60-byte gzip file: refused from the gzip
    # trailer's size, in a process whose address space could not even hold 1 GB.
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 4_000_000, 28, 28)
    (tmp_path / "liar.gz").write_bytes(gzip.compress(header + bytes(100)))
    (tmp_path / "liar").write_bytes(header + bytes(100))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from vae_runtime.idx import read_idx\n"
        "from vae_runtime.errors import DataError\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        read_idx(name)\n"
        "    except DataError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "liar.gz"), str(tmp_path / "liar")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "needs 3,136,000,000 data bytes, the gzip stream holds 100" in lines[0]
    assert "needs 3,136,000,000 data bytes, the file holds 100" in lines[1]
    assert resource.RLIMIT_AS  # the limit the child ran under exists on this platform


def test_limit_reads_only_the_images_asked_for(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    for name in ("a.gz", "a.idx"):
        write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(read_idx(tmp_path / name, IMAGES_MAGIC, limit=3), images[:3])
        assert read_idx(tmp_path / name, limit=80).shape == (50, 28, 28)
        assert read_idx(tmp_path / name, limit=0).shape == (0, 28, 28)
    with pytest.raises(InvalidArgumentError, match="count must be >= 0"):
        read_idx(tmp_path / "a.idx", limit=-1)


def test_non_regular_files_are_refused_without_opening(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo")  # opening it would wait forever for a writer
    with pytest.raises(DataError, match="is not a regular file"):
        read_idx(tmp_path / "fifo")
    with pytest.raises(DataError, match=r"is a folder|not a regular file"):
        read_idx(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "missing")


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="uint8"):
        write_idx(tmp_path / "f", np.zeros(3, np.float32))
    with pytest.raises(InvalidArgumentError, match="1 to 255 dimensions"):
        write_idx(tmp_path / "f", np.zeros((), np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("error", "message"),
    [(IsADirectoryError, "is a folder"), (PermissionError, "permission denied")],
)
def test_what_opening_an_idx_file_can_still_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[OSError], message: str
) -> None:
    # the checks before opening see a regular file; the open itself is refused (a folder swapped
    # in meanwhile, or a user without permission: the tests run as root)
    import vae_runtime.idx as idx

    write_idx(tmp_path / "a.idx", np.zeros((1, 28, 28), np.uint8))

    def refuse(*args: object, **kwargs: object) -> None:
        raise error(13, "refused", str(tmp_path / "a.idx"))

    monkeypatch.setattr(idx, "open", refuse, raising=False)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "a.idx")
