"""Grids, upscaling, the grid cap, PNG/GIF files and per-image file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vae_runtime import InvalidArgumentError, NumericalError, save_gif, save_png, tile
from vae_runtime.images import MAX_GRID_PIXELS, grid_size, image_file_names, to_uint8, upscale


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
        tile(np.zeros((1, 28, 28), np.uint8), 200, 200, scale=64)
    with pytest.raises(InvalidArgumentError, match=r"scale must be in 1\.\.64"):
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


def test_image_file_names_sort_in_order() -> None:
    assert image_file_names("s", 3, start=98) == ["s_00098.png", "s_00099.png", "s_00100.png"]
    assert image_file_names("s", 2, start=123_455) == ["s_123455.png", "s_123456.png"]
