"""Grids, upscaling, the grid cap, PNG/GIF/per-image files and the streaming .npy writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_runtime import (
    InvalidArgumentError,
    NpyWriter,
    NumericalError,
    OutputError,
    save_gif,
    save_png,
    tile,
)
from vae_runtime.images import MAX_GRID_PIXELS, grid_size, save_image_files, to_uint8, upscale


def test_tile_places_images_row_by_row() -> None:
    images = np.stack([np.full((28, 28), 10 * (i + 1), np.uint8) for i in range(5)])
    grid = tile(images, rows=2, cols=3, padding=2)
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert grid[2, 2] == 10
    assert grid[2, 32] == 20  # second column
    assert grid[32, 2] == 40  # second row starts with the 4th image
    assert grid[32, 62] == 0  # empty cell stays black
    assert grid[0].max() == 0  # padding
    assert grid[:, 30:32].max() == 0


def test_tile_scale_repeats_pixels() -> None:
    images = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    small = tile(images, 2, 2, padding=1)
    big = tile(images, 2, 2, padding=1, scale=3)
    assert big.shape == (small.shape[0] * 3, small.shape[1] * 3)
    np.testing.assert_array_equal(big[::3, ::3], small)
    np.testing.assert_array_equal(upscale(small, 3), big)


def test_grid_cap_is_checked_from_arithmetic() -> None:
    assert grid_size(5, 5) == (152, 152)
    side = int((MAX_GRID_PIXELS**0.5 - 2) // 30) + 1
    with pytest.raises(InvalidArgumentError, match="above the cap"):
        grid_size(side, side)
    with pytest.raises(InvalidArgumentError, match="above the cap"):
        tile(np.zeros((1, 28, 28), np.uint8), 2, 2, scale=10_000)
    with pytest.raises(InvalidArgumentError, match="do not fit"):
        tile(np.zeros((5, 28, 28), np.uint8), 2, 2)


def test_to_uint8_refuses_nan() -> None:
    with pytest.raises(NumericalError):
        to_uint8(np.full((1, 1, 28, 28), np.nan, np.float32))
    np.testing.assert_array_equal(
        to_uint8(np.array([[[[0.0, 0.5, 1.0, 2.0]]]])), [[[0, 128, 255, 255]]]
    )


def test_png_round_trip(tmp_path: Path) -> None:
    grid = np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8)
    save_png(grid, tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)


def test_gif_frames_and_loop(tmp_path: Path) -> None:
    frames = np.stack([np.full((20, 30), v, np.uint8) for v in (0, 100, 200, 255)])
    save_gif(frames, tmp_path / "a.gif", frame_ms=50)
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 4
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 50
        for i, value in enumerate((0, 100, 200, 255)):
            gif.seek(i)
            assert np.asarray(gif.convert("L"))[5, 5] == value
    with pytest.raises(InvalidArgumentError):
        save_gif(frames.astype(np.float32), tmp_path / "b.gif")


def test_save_image_files_names_and_scale(tmp_path: Path) -> None:
    images = np.random.default_rng(2).random((3, 1, 28, 28)).astype(np.float32)
    paths = save_image_files(images, tmp_path, prefix="s", start=98, digits=3, scale=2)
    assert [p.name for p in paths] == ["s_098.png", "s_099.png", "s_100.png"]
    with Image.open(paths[1]) as image:
        assert image.size == (56, 56)
        np.testing.assert_array_equal(np.asarray(image)[::2, ::2], to_uint8(images)[1])


def test_npy_writer_streams_a_valid_file(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((10, 1, 28, 28)).astype(np.float32)
    with NpyWriter(tmp_path / "a.npy", data.shape) as npy:
        for start in range(0, 10, 4):
            npy.write(data[start : start + 4])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)
    assert {p.name for p in tmp_path.iterdir()} == {"a.npy"}


def test_npy_writer_leaves_nothing_when_short_or_failing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="3 of 5 declared rows"):  # noqa: SIM117
        with NpyWriter(tmp_path / "short.npy", (5, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float32))

    def interrupted() -> None:
        with NpyWriter(tmp_path / "boom.npy", (5, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float32))
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted()
    with pytest.raises(InvalidArgumentError, match="does not fit"):  # noqa: SIM117
        with NpyWriter(tmp_path / "dtype.npy", (5, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float64))
    assert list(tmp_path.iterdir()) == []


def test_npy_writer_full_disk_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OutputError, match="do not fit on the disk"):  # noqa: SIM117
        with NpyWriter(tmp_path / "big.npy", (10, 2)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_npy_writer_refuses_what_cannot_fit_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real = os.statvfs(tmp_path)

    class Tiny:  # the disk as statvfs reports it, with 1 KiB free
        f_bavail, f_frsize = 1, 1024

    def never(fd: int, offset: int, size: int) -> None:
        raise AssertionError("posix_fallocate called for a file that cannot fit")

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny if Path(path) == tmp_path else real)
    monkeypatch.setattr(os, "posix_fallocate", never)
    with pytest.raises(OutputError, match=r"do not fit on the disk \(1,024 free\)"):  # noqa: SIM117
        with NpyWriter(tmp_path / "big.npy", (10, 784)):
            pass
    assert list(tmp_path.iterdir()) == []
