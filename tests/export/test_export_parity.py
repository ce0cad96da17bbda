"""Numerical agreement: onnxruntime and PyTorch agree on both graphs and on the whole path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from vae_export.verify import ATOL, EXTREME_LATENT, LATENT_SCALE
from vae_runtime.contract import ENCODER_OUTPUTS, IMAGE_SHAPE
from vae_runtime.images import tile
from vae_runtime.sampling import sample_latents

if TYPE_CHECKING:  # the fixture's type, defined in tests/export/conftest.py
    from conftest import Exported

# 1; sizes seen at export (2) and in its verification (64) and ones it never saw (7, 257, 1500;
# 257 also wraps past the 256 distinct digits), so the batch axis is shown to be dynamic.
SIZES = (1, 2, 7, 64, 257, 1500)


def _images(kind: str, n: int, digits: np.ndarray) -> np.ndarray:
    if kind == "digits":
        return np.resize(digits, (n, *IMAGE_SHAPE))
    return np.random.default_rng(n).uniform(0, 1, (n, *IMAGE_SHAPE)).astype(np.float32)


def _latents(kind: str, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(n + 100)
    if kind == "normal*3":
        return (rng.standard_normal((n, d)) * LATENT_SCALE).astype(np.float32)
    z = rng.uniform(-EXTREME_LATENT, EXTREME_LATENT, (n, d))
    z[::2] = np.sign(z[::2]) * EXTREME_LATENT  # corners of the box: the largest logits
    return z.astype(np.float32)


def _torch_encode(ex: Exported, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        mu, logvar = ex.model.encode(torch.from_numpy(images).reshape(len(images), -1))
    return mu.numpy(), logvar.numpy()


def _torch_decode(ex: Exported, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ex.model.decode(torch.from_numpy(z)).numpy().reshape(-1, *IMAGE_SHAPE)


def _onnx_decode(ex: Exported, z: np.ndarray) -> np.ndarray:
    return ex.decoder.decode(z, batch_size=len(z))  # one graph run, as the runtime does it


@pytest.mark.parametrize("kind", ["digits", "uniform"])
@pytest.mark.parametrize("n", SIZES)
def test_encoder_matches_torch(exported: Exported, digits: np.ndarray, kind: str, n: int) -> None:
    images = _images(kind, n, digits)
    got = exported.encoder.encode(images, batch_size=n)
    for name, g, w in zip(ENCODER_OUTPUTS, got, _torch_encode(exported, images), strict=True):
        assert g.shape == (n, exported.model.config.latent_dim), name
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("kind", ["normal*3", "extreme"])
@pytest.mark.parametrize("n", SIZES)
def test_decoder_matches_torch(exported: Exported, kind: str, n: int) -> None:
    z = _latents(kind, n, exported.model.config.latent_dim)
    got = _onnx_decode(exported, z)
    assert got.shape == (n, *IMAGE_SHAPE)
    np.testing.assert_allclose(got, _torch_decode(exported, z), rtol=0, atol=ATOL)
    assert got.min() >= 0.0
    assert got.max() <= 1.0


def test_same_seed_same_grid_within_one_grey_level(exported: Exported) -> None:
    z = sample_latents(25, exported.model.config.latent_dim, seed=7)  # what both sides draw
    grid_torch = tile(_torch_decode(exported, z), rows=5, cols=5)
    grid_onnx = tile(exported.decoder.sample(25, seed=7), rows=5, cols=5)
    assert grid_torch.shape == grid_onnx.shape == (5 * 30 + 2, 5 * 30 + 2)
    assert grid_torch.std() > 10  # drawn digits, not a blank grid that would match trivially
    assert np.abs(grid_torch.astype(np.int16) - grid_onnx).max() <= 1


def test_encode_decode_through_onnx_equals_torch_mean_reconstruction(
    exported: Exported, digits: np.ndarray
) -> None:
    images = digits[:50]
    mu, _ = exported.encoder.encode(images)
    got = _onnx_decode(exported, mu)
    want = _torch_decode(exported, _torch_encode(exported, images)[0])
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    # Reconstructions depend on the input (a constant output would agree trivially).
    assert np.abs(got - got[::-1]).max() > 1e-2
