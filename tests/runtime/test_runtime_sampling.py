"""Latent sampling: streams equal the whole, temperature, slerp/lerp paths, the manifold lattice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_runtime import (
    InvalidArgumentError,
    interpolate,
    iter_latents,
    manifold_latents,
    sample_latents,
)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    d=st.integers(1, 24),
    seed=st.integers(0, 2**32),
    batch=st.integers(1, 400),
    temperature=st.floats(0, 3),
)
def test_iter_latents_equals_sample_latents(
    n: int, d: int, seed: int, batch: int, temperature: float
) -> None:
    whole = sample_latents(n, d, seed, temperature)
    parts = list(iter_latents(n, d, seed, temperature, batch_size=batch))
    assert all(p.shape[0] <= batch for p in parts)
    streamed = np.concatenate(parts) if parts else np.empty((0, d), np.float32)
    np.testing.assert_array_equal(streamed, whole)


def test_sample_latents_is_default_rng_scaled() -> None:
    expected = (np.random.default_rng(7).standard_normal((4, 3)) * 0.5).astype(np.float32)
    np.testing.assert_array_equal(sample_latents(4, 3, 7, 0.5), expected)
    assert not sample_latents(3, 2, 0, 0.0).any()


@pytest.mark.parametrize("temperature", [-0.1, math.nan, math.inf])
def test_bad_temperature(temperature: float) -> None:
    with pytest.raises(InvalidArgumentError, match="temperature"):
        sample_latents(2, 2, 0, temperature)


@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_ends_are_exact(method: str) -> None:
    z0, z1 = sample_latents(2, 20, 1)
    path = interpolate(z0, z1, 9, method)
    assert path.shape == (9, 20)
    np.testing.assert_allclose(path[0], z0, atol=1e-6)
    np.testing.assert_allclose(path[-1], z1, atol=1e-6)


def test_slerp_keeps_norms_where_lerp_shrinks_them() -> None:
    z0, z1 = sample_latents(2, 20, 2)
    slerp = np.linalg.norm(interpolate(z0, z1, 11, "slerp"), axis=1)
    lerp = np.linalg.norm(interpolate(z0, z1, 11, "lerp"), axis=1)
    expected = np.linspace(np.linalg.norm(z0), np.linalg.norm(z1), 11)
    np.testing.assert_allclose(slerp, expected, rtol=1e-5)
    assert lerp[5] < 0.9 * expected[5]  # the straight line cuts inside the shell


def test_slerp_midpoint_lies_between_the_directions() -> None:
    mid = interpolate(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 3, "slerp")[1]
    np.testing.assert_allclose(mid, [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)


def test_interpolation_errors() -> None:
    with pytest.raises(InvalidArgumentError, match=r"steps must be in 2\.\.10,000"):
        interpolate(np.zeros(2), np.ones(2), 1)
    with pytest.raises(InvalidArgumentError, match="differ in size"):
        interpolate(np.zeros(2), np.ones(3), 4)


def test_manifold_lattice_orientation_and_quantiles() -> None:
    lattice = manifold_latents(3, 4).reshape(3, 4, 2)
    assert np.all(np.diff(lattice[..., 0], axis=1) > 0)  # x rises to the right
    assert np.all(np.diff(lattice[..., 1], axis=0) < 0)  # y falls downwards
    np.testing.assert_allclose(lattice[1, :, 1], 0, atol=1e-7)  # middle row: the median
    np.testing.assert_allclose(lattice[0, :2, 0], -lattice[0, :1:-1, 0], atol=1e-6)
    assert lattice[0, 0, 0] == pytest.approx(-1.1503494, abs=1e-6)  # Phi^-1(1/8)
    np.testing.assert_allclose(manifold_latents(3, 4, 2.0), 2 * lattice.reshape(-1, 2))
    with pytest.raises(InvalidArgumentError, match=r"rows must be in 1\.\."):
        manifold_latents(0, 4)


def test_arrays_too_large_to_return_whole_point_at_streaming() -> None:
    with pytest.raises(InvalidArgumentError, match="stream them"):
        sample_latents(10**6, 4096, seed=0)
    with pytest.raises(InvalidArgumentError, match="NaN or infinite"):
        interpolate([float("nan")], [1.0], 3)
