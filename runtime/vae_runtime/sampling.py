"""Latent sampling and interpolation, shared by the torch and onnxruntime sides.

The contract: `sample_latents(n, d, seed, temperature)` is numpy's `default_rng(seed)` drawing
float64 standard normals in row-major order, scaled, then cast to float32. Drawing the same rows
in batches (`iter_latents`) yields exactly the same numbers, so a 100,000-image stream and a
5x5 grid from the same seed start with the same latents.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .errors import InvalidArgumentError


def _check_sampling_args(n: int, latent_dim: int, temperature: float) -> None:
    if n < 0:
        raise InvalidArgumentError(f"number of samples must be >= 0, got {n}")
    if latent_dim < 1:
        raise InvalidArgumentError(f"latent size must be >= 1, got {latent_dim}")
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidArgumentError(f"temperature must be a finite number >= 0, got {temperature}")


def _draw(rng: np.random.Generator, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    z = rng.standard_normal((n, latent_dim))  # (n, d) float64
    if temperature != 1.0:
        z *= temperature
    return z.astype(np.float32)


def sample_latents(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """Draw `n` latents from N(0, temperature^2 I): float32 array of shape (n, latent_dim)."""
    _check_sampling_args(n, latent_dim, temperature)
    return _draw(np.random.default_rng(seed), n, latent_dim, temperature)


def iter_latents(
    n: int, latent_dim: int, seed: int, temperature: float = 1.0, batch_size: int = 4096
) -> Iterator[np.ndarray]:
    """Yield the rows of `sample_latents(n, ...)` in batches of at most `batch_size`."""
    _check_sampling_args(n, latent_dim, temperature)
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch_size):
        yield _draw(rng, min(batch_size, n - start), latent_dim, temperature)


def interpolate(z0: np.ndarray, z1: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """Latents on the path from `z0` to `z1` (both (d,)), ends included: float32 (steps, d).

    "lerp" walks the straight line. "slerp" walks the great circle and interpolates the norm
    linearly: under a Gaussian prior, the straight line's midpoint has a norm far below typical
    samples (it passes near the mode, which decodes to blurry averages), the arc does not.
    """
    if steps < 2:
        raise InvalidArgumentError(f"interpolation steps must be >= 2, got {steps}")
    if method not in ("lerp", "slerp"):
        raise InvalidArgumentError(
            f"interpolation method must be 'lerp' or 'slerp', got {method!r}"
        )
    a = np.asarray(z0, dtype=np.float64).reshape(-1)
    b = np.asarray(z1, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise InvalidArgumentError(f"latents differ in size: {a.shape[0]} and {b.shape[0]}")
    t = np.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if method == "lerp" or na == 0.0 or nb == 0.0:
        return ((1 - t) * a + t * b).astype(np.float32)
    ua, ub = a / na, b / nb
    omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
    if math.sin(omega) < 1e-6:  # (anti)parallel: no unique great circle, walk the line
        return ((1 - t) * a + t * b).astype(np.float32)
    direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / math.sin(omega)
    norm = (1 - t) * na + t * nb
    return (direction * norm).astype(np.float32)


def manifold_latents(rows: int, cols: int, temperature: float = 1.0) -> np.ndarray:
    """A rows x cols lattice over a 2-D latent plane at the prior's quantiles: float32
    (rows * cols, 2), row by row, z[0] rising left to right and z[1] falling top to bottom
    (so "up" on the picture is up in latent space).

    Cell centres sit at Gaussian quantiles (i + 0.5) / n, so each cell covers an equal share of
    the prior's mass, as in Kingma & Welling's manifold figures; `temperature` scales the plane.
    """
    for name, value in (("rows", rows), ("cols", cols)):
        if value < 1:
            raise InvalidArgumentError(f"{name} must be >= 1, got {value}")
    _check_sampling_args(rows * cols, 2, temperature)
    from statistics import NormalDist  # 4 ms of imports that only the manifold needs

    inv_cdf = NormalDist().inv_cdf
    xs = np.array([inv_cdf((i + 0.5) / cols) for i in range(cols)]) * temperature  # (cols,)
    ys = np.array([inv_cdf((i + 0.5) / rows) for i in range(rows)])[::-1] * temperature
    grid = np.stack(np.meshgrid(xs, ys), axis=-1)  # (rows, cols, 2): [..., 0] = x, [..., 1] = y
    return grid.reshape(rows * cols, 2).astype(np.float32)
