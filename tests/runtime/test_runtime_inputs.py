"""Reading user images: modes, sizes, inversion, fitting, caps, bombs, corrupt files, IDX."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from runtime_graphs import write_blank_png

from vae_runtime import DataError, InvalidArgumentError, load_inputs, read_image
from vae_runtime.idx import write_idx
from vae_runtime.inputs import MAX_INPUT_PIXELS, fit_mnist


def test_28x28_greyscale_png_round_trips_exactly(tmp_path: Path, make_digits) -> None:
    digit = make_digits(1, 0)[0][0]
    Image.fromarray(digit).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), digit)


def test_light_background_rgb_is_inverted(tmp_path: Path, make_digits) -> None:
    digit = make_digits(1, 0)[0][0]
    rgb = np.repeat((255 - digit)[..., None], 3, axis=2)  # black ink on white paper
    Image.fromarray(rgb, "RGB").save(tmp_path / "paper.png")
    np.testing.assert_array_equal(read_image(tmp_path / "paper.png"), digit)


def test_transparency_is_laid_over_white(tmp_path: Path, make_digits) -> None:
    digit = make_digits(1, 0)[0][0]
    rgba = np.zeros((28, 28, 4), np.uint8)  # black ink whose opacity is the digit
    rgba[..., 3] = digit
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ink.png")
    np.testing.assert_array_equal(read_image(tmp_path / "ink.png"), digit)


def test_large_photo_is_fitted_and_centred_like_mnist(tmp_path: Path) -> None:
    canvas = np.full((300, 500), 240, np.uint8)  # light paper, a dark bar off-centre
    canvas[40:200, 60:100] = 10
    Image.fromarray(canvas).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    image = read_image(tmp_path / "photo.jpg")
    assert image.shape == (28, 28)
    assert image.dtype == np.uint8
    assert image.max() == 255
    ys = np.nonzero(image > 30)[0]
    assert ys.max() - ys.min() + 1 == 20  # the tall side fills the 20-pixel box
    mass = image.astype(float)
    cy = (mass.sum(axis=1) @ np.arange(28)) / mass.sum()
    cx = (mass.sum(axis=0) @ np.arange(28)) / mass.sum()
    assert abs(cy - 13.5) < 1
    assert abs(cx - 13.5) < 1


def test_16_bit_and_palette_images(tmp_path: Path, make_digits) -> None:
    digit = make_digits(1, 0)[0][0]
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png"), digit)
    Image.fromarray(digit).convert("P").save(tmp_path / "pal.gif")
    assert np.abs(read_image(tmp_path / "pal.gif").astype(int) - digit).max() <= 8


def test_blank_image_stays_blank(tmp_path: Path) -> None:
    assert not fit_mnist(np.zeros((100, 80), np.uint8)).any()


def test_decompression_bomb_is_refused_without_decoding(bomb_png: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(DataError, match="refused without decoding"):
        read_image(bomb_png)
    assert time.perf_counter() - start < 1.0  # decoding 2.5 Gpx would take far longer


def test_image_above_the_cap_is_refused(tmp_path: Path) -> None:
    # Above our cap, below Pillow's own: only our check stops it.
    side = int(MAX_INPUT_PIXELS**0.5) + 1
    path = write_blank_png(tmp_path / "big.png", side, side)
    with pytest.raises(DataError, match=f"{side}x{side} pixels is above the input cap"):
        read_image(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"just some text", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "bad.png"),
        (b"", "not an image"),
    ],
    ids=["text", "broken-png", "empty"],
)
def test_non_images_and_corrupt_images(tmp_path: Path, content: bytes, pattern: str) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        read_image(tmp_path / "bad.png")


def test_truncated_png_is_corrupt(tmp_path: Path, make_digits) -> None:
    Image.fromarray(make_digits(1, 0)[0][0]).save(tmp_path / "d.png")
    data = (tmp_path / "d.png").read_bytes()
    (tmp_path / "d.png").write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match=r"d\.png"):
        read_image(tmp_path / "d.png")


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DataError, match="is a folder"):
        read_image(tmp_path)


def test_load_inputs_mixes_files_and_idx_up_to_the_limit(tmp_path: Path, make_digits) -> None:
    images, _ = make_digits(30, 4)
    write_idx(tmp_path / "many.idx", images[:20])
    write_idx(tmp_path / "more.gz", images[20:])
    Image.fromarray(images[0]).save(tmp_path / "one.png")
    got = load_inputs([tmp_path / "one.png", tmp_path / "many.idx", tmp_path / "more.gz"], 25)
    np.testing.assert_array_equal(got, np.concatenate([images[:1], images[:20], images[20:24]]))
    assert load_inputs([tmp_path / "many.idx"], 3).shape == (3, 28, 28)


def test_load_inputs_errors(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels.idx", np.arange(5, dtype=np.uint8))
    with pytest.raises(DataError, match=f"expected {2051}"):
        load_inputs([tmp_path / "labels.idx"], 5)
    write_idx(tmp_path / "wide.idx", np.zeros((2, 28, 30), np.uint8))
    with pytest.raises(DataError, match=r"expected \(28, 28\)"):
        load_inputs([tmp_path / "wide.idx"], 5)
    with pytest.raises(InvalidArgumentError, match=r"count must be in 1\.\."):
        load_inputs([tmp_path / "wide.idx"], 0)


def test_odd_input_paths(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.png")  # opening it would wait forever
    with pytest.raises(DataError, match="is not a regular file"):
        read_image(tmp_path / "fifo.png")
    with pytest.raises(DataError, match="File name too long"):
        read_image(tmp_path / ("x" * 300))
    write_idx(tmp_path / "empty.idx", np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(DataError, match="holds no images"):
        load_inputs([tmp_path / "empty.idx"], 3)


def test_an_image_pillow_cannot_parse(tmp_path: Path) -> None:
    header = b"\x89PNG\r\n\x1a\n"  # a PNG whose first chunk is not IHDR: Pillow's SyntaxError
    (tmp_path / "odd.png").write_bytes(header + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    with pytest.raises(DataError, match=r"odd\.png"):
        read_image(tmp_path / "odd.png")


def test_a_decoder_failure_inside_pillow_is_a_data_error(
    tmp_path: Path, make_digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's plugins raise ValueError or SyntaxError on some damaged data
    from vae_runtime import inputs

    Image.fromarray(make_digits(1, 0)[0][0]).save(tmp_path / "d.png")

    def damaged(image: object) -> None:
        raise SyntaxError("broken PNG file")

    monkeypatch.setattr(inputs, "_to_grey", damaged)
    with pytest.raises(DataError, match=r"d\.png: corrupt image data \(broken PNG file\)"):
        read_image(tmp_path / "d.png")
