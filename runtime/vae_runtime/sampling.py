"""Latent sampling and interpolation, shared by the torch and onnxruntime sides, and their rules.

The contract: `sample_latents(n, d, seed, temperature)` is numpy's `default_rng(seed)` drawing
float64 standard normals in row-major order, scaled, then cast to float32. Drawing the same rows
in batches (`iter_latents`) yields exactly the same numbers, so a 100,000-image stream and a
5x5 grid from the same seed start with the same latents.

Each argument rule is written once, here, in the function that needs it (`check_sampling`,
`check_batch_size`); the commands call those before loading anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from .contract import MAX_LATENT_DIM
from .errors import InvalidArgumentError, as_array, check_float, check_int

MAX_SEED = 2**63 - 1  # torch's generators take the same seeds (training draws samples.png too)
MAX_TEMPERATURE = 1000.0  # far past where the sigmoid saturates; keeps every latent finite
MAX_SAMPLES = 10**9  # per stream (iter_latents, vae-generate --npy): 3 TB of images
MAX_BATCH_SIZE = 1 << 16  # rows per graph run: 200 MB of images at most
MAX_IN_MEMORY_BYTES = 1 << 31  # arrays returned whole (sample_latents, Decoder.sample): 2 GiB
MAX_STEPS = 10_000  # interpolation steps
METHODS = ("slerp", "lerp")
DEFAULT_STREAM_BATCH = 4096


def check_sampling(n: int, seed: int, temperature: float, latent_dim: int = 1) -> None:
    """The rules of a draw: 0 <= n <= MAX_SAMPLES, 0 <= seed <= MAX_SEED, temperature finite in
    [0, MAX_TEMPERATURE], 1 <= latent_dim <= MAX_LATENT_DIM. Raises InvalidArgumentError."""
    check_int("count", n, 0, MAX_SAMPLES)
    check_int("seed", seed, 0, MAX_SEED)
    check_float("temperature", temperature, 0.0, MAX_TEMPERATURE)
    check_int("latent size", latent_dim, 1, MAX_LATENT_DIM)


def check_batch_size(batch_size: int) -> int:
    """Rows per graph run: 1..MAX_BATCH_SIZE."""
    return check_int("batch size", batch_size, 1, MAX_BATCH_SIZE)


def check_in_memory(n: int, row_bytes: int, what: str) -> None:
    """Refuse an array of `n` rows that would pass MAX_IN_MEMORY_BYTES, pointing at streaming."""
    if n * row_bytes > MAX_IN_MEMORY_BYTES:
        raise InvalidArgumentError(
            f"{n:,} {what} need {n * row_bytes:,} bytes, above the {MAX_IN_MEMORY_BYTES:,} "
            "returned whole; stream them (iter_latents, Decoder.iter_samples) instead"
        )


def _draw(rng: np.random.Generator, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    z = rng.standard_normal((n, latent_dim))  # (n, d) float64
    if temperature != 1.0:
        z *= temperature
    return z.astype(np.float32)


def sample_latents(n: int, latent_dim: int, seed: int, temperature: float = 1.0) -> np.ndarray:
    """Draw `n` latents from N(0, temperature^2 I): float32 array of shape (n, latent_dim)."""
    check_sampling(n, seed, temperature, latent_dim)
    check_in_memory(n, latent_dim * 8, "latents")  # drawn as float64 first
    return _draw(np.random.default_rng(seed), n, latent_dim, temperature)


def iter_latents(
    n: int,
    latent_dim: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = DEFAULT_STREAM_BATCH,
) -> Iterator[np.ndarray]:
    """Yield the rows of `sample_latents(n, ...)` in batches of at most `batch_size`."""
    check_sampling(n, seed, temperature, latent_dim)
    check_batch_size(batch_size)
    return _stream(n, latent_dim, seed, temperature, batch_size)


def _stream(
    n: int, latent_dim: int, seed: int, temperature: float, batch_size: int
) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch_size):
        yield _draw(rng, min(batch_size, n - start), latent_dim, temperature)


def _as_latent(z: Any, name: str) -> np.ndarray:
    a = as_array(name, z)
    if a.dtype.kind not in "fiu" or a.ndim != 1 or a.size == 0:
        raise InvalidArgumentError(
            f"{name} must be a non-empty 1-D numeric vector, got {a.dtype} of shape {a.shape}"
        )
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InvalidArgumentError(f"{name} contains NaN or infinite values")
    # Every latent on either path is at most the larger end's norm: keep that within float32.
    with np.errstate(over="ignore"):  # a norm past float64's range is inf: refused below too
        norm = float(np.linalg.norm(a))
    if norm > float(np.finfo(np.float32).max):
        raise InvalidArgumentError(f"{name} has a norm beyond float32's range")
    return a


def check_interpolation(steps: int, method: str) -> None:
    """The rules of an interpolation: 2..MAX_STEPS steps, method one of METHODS."""
    check_int("steps", steps, 2, MAX_STEPS)
    if method not in METHODS:
        raise InvalidArgumentError(
            f"interpolation method must be {' or '.join(map(repr, METHODS))}, got {method!r}"
        )


def interpolate(z0: Any, z1: Any, steps: int, method: str = "slerp") -> np.ndarray:
    """Latents on the path from `z0` to `z1` (both (d,)), ends included: float32 (steps, d).

    "lerp" walks the straight line. "slerp" walks the great circle and interpolates the norm
    linearly: under a Gaussian prior, the straight line's midpoint has a norm far below typical
    samples (it passes near the mode, which decodes to blurry averages), the arc does not.
    """
    check_interpolation(steps, method)
    a, b = _as_latent(z0, "z0"), _as_latent(z1, "z1")
    if a.shape != b.shape:
        raise InvalidArgumentError(f"latents differ in size: {a.shape[0]} and {b.shape[0]}")
    t = np.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    path = (1 - t) * a + t * b  # (steps, d) float64: the line
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if method == "slerp" and na > 0.0 and nb > 0.0 and math.isfinite(na * nb):
        ua, ub = a / na, b / nb
        omega = math.acos(float(np.clip(ua @ ub, -1.0, 1.0)))
        if math.sin(omega) >= 1e-6:  # (anti)parallel ends have no unique great circle
            direction = (np.sin((1 - t) * omega) * ua + np.sin(t * omega) * ub) / math.sin(omega)
            path = direction * ((1 - t) * na + t * nb)
    latents: np.ndarray = path.astype(np.float32)  # finite: bounded by the ends' norms
    return latents


def manifold_latents(rows: int, cols: int, temperature: float = 1.0) -> np.ndarray:
    """A rows x cols lattice over a 2-D latent plane at the prior's quantiles: float32
    (rows * cols, 2), row by row, z[0] rising left to right and z[1] falling top to bottom
    (so "up" on the picture is up in latent space).

    Cell centres sit at Gaussian quantiles (i + 0.5) / n, so each cell covers an equal share of
    the prior's mass, as in Kingma & Welling's manifold figures; `temperature` scales the plane.
    """
    check_int("rows", rows, 1, MAX_STEPS)
    check_int("cols", cols, 1, MAX_STEPS)
    check_float("temperature", temperature, 0.0, MAX_TEMPERATURE)
    check_in_memory(rows * cols, 2 * 8, "lattice points")
    from statistics import NormalDist  # 4 ms of imports that only the manifold needs

    inv_cdf = NormalDist().inv_cdf
    xs = np.array([inv_cdf((i + 0.5) / cols) for i in range(cols)]) * temperature  # (cols,)
    ys = np.array([inv_cdf((i + 0.5) / rows) for i in range(rows)])[::-1] * temperature
    grid = np.stack(np.meshgrid(xs, ys), axis=-1)  # (rows, cols, 2): [..., 0] = x, [..., 1] = y
    return grid.reshape(rows * cols, 2).astype(np.float32)
