"""Fixtures every part of the suite shares: synthetic digit images, small IDX folders, real data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vae_runtime.idx import write_idx

REAL_DATA_ENV = "VAE_DATA_DIR"


def render_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` digit-like images: a glyph 0-9 at a random size, offset and slant, blurred like a pen
    stroke. Returns uint8 images (n, 28, 28) (white ink on black, like MNIST) and labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    fonts = {size: ImageFont.load_default(size=size) for size in (18, 20, 22)}
    for i, label in enumerate(labels):
        canvas = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(canvas)
        font = fonts[int(rng.choice(list(fonts)))]
        dx, dy = rng.integers(-2, 3, size=2)
        draw.text(
            (14 + dx, 14 + dy),
            str(label),
            fill=255,
            font=font,
            anchor="mm",
            stroke_width=int(rng.integers(0, 2)),
            stroke_fill=255,
        )
        shear = float(rng.uniform(-0.25, 0.25))
        canvas = canvas.transform(
            (28, 28), Image.Transform.AFFINE, (1, shear, -14 * shear, 0, 1, 0)
        )
        images[i] = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)))
    return images, labels


@pytest.fixture(scope="session")
def make_digits() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """The digit renderer, cached per (n, seed)."""
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def make(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        if (n, seed) not in cache:
            cache[(n, seed)] = render_digits(n, seed)
        return cache[(n, seed)]

    return make


def write_mnist_dir(directory: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A folder laid out like MNIST's download (four gzip IDX files) holding synthetic digits."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = render_digits(n, s)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic MNIST folder: 512 training and 128 test images."""
    return write_mnist_dir(tmp_path_factory.mktemp("mnist"), 512, 128)


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """The real MNIST folder named by VAE_DATA_DIR (CI sets it); skips the test when unset."""
    value = os.environ.get(REAL_DATA_ENV)
    if not value:
        pytest.skip(f"{REAL_DATA_ENV} is not set: real-data test skipped")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{REAL_DATA_ENV}={value} is not a folder")
    return path
