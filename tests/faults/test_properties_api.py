"""The Python API in memory (decoding, encoding, sampling, latent paths, image grids) called with
arguments drawn from wide strategies: a result checked against an independent reference
(decoding is compared with onnxruntime run row by row), or a `VaeError`."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from properties import (
    HUGE_INTS,
    LATENT,
    NON_ARRAYS,
    PICTURE_SHAPES,
    Kit,
    _is_int,
    _is_real,
    arrays,
    attempt,
    bounded,
    documented_images,
    documented_latent_draw,
    documented_latents,
    documented_uint8,
    ints_or_junk,
    mostly,
    reals_or_junk,
    ref_decode,
    ref_encode,
    refused,
)

from vae_runtime.images import (
    MAX_GRID_PIXELS,
    grid_size,
    tile,
    to_uint8,
    upscale,
)
from vae_runtime.sampling import (
    interpolate,
    iter_latents,
    manifold_latents,
    sample_latents,
)
from vae_runtime.session import reconstruct

# -- 3. the Python API: a correct answer or a VaeError --------------------------------------------

ROWS = st.one_of(st.integers(0, 5), st.just(70))
FLOATS_AND_INTS = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64]


def latent_shapes(d: int) -> SearchStrategy[tuple[int, ...]]:
    """(N, d) mostly, and every wrong shape near it."""
    return st.one_of(
        ROWS.map(lambda n: (n, d)),
        st.tuples(ROWS, st.integers(0, 4)),
        st.sampled_from([(), (d,), (1, d, 1), (2, 0), (0, 0)]),
    )


def image_shapes() -> SearchStrategy[tuple[int, ...]]:
    """(N, 28, 28), (N, 1, 28, 28), (28, 28), and near misses."""
    n = st.integers(0, 3)
    return st.one_of(
        n.map(lambda k: (k, 28, 28)),
        n.map(lambda k: (k, 1, 28, 28)),
        st.just((28, 28)),
        st.sampled_from([(1, 28, 27), (1, 2, 28, 28), (784,), (), (1, 28, 28, 1)]),
    )


@bounded(70)
@given(
    z=mostly(
        arrays(ROWS.map(lambda n: (n, LATENT)), dtypes=FLOATS_AND_INTS, low=-5, high=5),
        st.one_of(arrays(latent_shapes(LATENT), low=-5, high=5), NON_ARRAYS),
    ),
    batch_size=mostly(st.one_of(st.integers(1, 8), st.just(65_536)), ints_or_junk((-2, 8))),
)
def test_decode(kit: Kit, z: Any, batch_size: Any) -> None:
    """Decoder.decode: images equal to decoding row by row, or a VaeError."""
    result = attempt(lambda: kit.decoder.decode(z, batch_size=batch_size))
    z32 = documented_latents(z, LATENT)
    if z32 is None or not _is_int(batch_size, 1, 1 << 16):
        assert refused(result), f"accepted {z!r} with batch size {batch_size!r}"
        return
    expected = ref_decode(kit, z32)
    if not np.isfinite(expected).all():  # the graph overflows: refused, never passed on
        assert refused(result)
        return
    assert not refused(result), result.error
    images = result.value
    assert images.dtype == np.float32 and images.shape == (z32.shape[0], 1, 28, 28)
    assert np.isfinite(images).all() and ((images >= 0) & (images <= 1)).all()
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)


@bounded(30)
@given(
    batches=st.lists(
        mostly(
            arrays(ROWS.map(lambda n: (n, LATENT)), dtypes=FLOATS_AND_INTS),
            st.one_of(arrays(latent_shapes(LATENT)), NON_ARRAYS),
        ),
        max_size=3,
    )
)
def test_iter_decode(kit: Kit, batches: list[Any]) -> None:
    """Decoder.iter_decode: one image batch per latent batch, each equal to decoding its rows
    one by one; a bad batch is a VaeError."""
    result = attempt(lambda: list(kit.decoder.iter_decode(batches)))
    wanted = [documented_latents(z, LATENT) for z in batches]
    expected = [ref_decode(kit, z) for z in wanted if z is not None]
    bad = any(z is None for z in wanted) or not all(np.isfinite(e).all() for e in expected)
    if bad:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert len(result.value) == len(expected)
    for images, reference in zip(result.value, expected, strict=True):
        assert images.dtype == np.float32 and images.shape == reference.shape
        np.testing.assert_allclose(images, reference, rtol=0, atol=1e-5)


@bounded(50)
@given(
    how=st.sampled_from(["sample", "iter_samples"]),
    n=mostly(st.integers(0, 6), ints_or_junk((-2, 6), refused_above=10**9)),
    seed=mostly(st.integers(0, 2**63 - 1), ints_or_junk((-2, 5))),
    temperature=mostly(st.floats(0, 1000), reals_or_junk()),
    batch_size=mostly(st.integers(1, 4), ints_or_junk((-1, 4))),
)
def test_sample(kit: Kit, how: str, n: Any, seed: Any, temperature: Any, batch_size: Any) -> None:
    """Decoder.sample / iter_samples: README's latents (default_rng(seed) normals times the
    temperature, as float32), decoded, equal to decoding them row by row; or a VaeError."""
    if how == "sample":
        result = attempt(lambda: kit.decoder.sample(n, seed, temperature))
    else:
        result = attempt(lambda: list(kit.decoder.iter_samples(n, seed, temperature, batch_size)))
    valid = _is_int(n, 0, 10**9) and _is_int(seed, 0, 2**63 - 1) and _is_real(temperature, 0, 1e3)
    if how == "iter_samples":
        valid = valid and _is_int(batch_size, 1, 1 << 16)
    if not valid:
        assert refused(result), f"accepted n={n!r} seed={seed!r} t={temperature!r}"
        return
    expected = ref_decode(kit, documented_latent_draw(n, LATENT, seed, temperature))
    assert not refused(result), result.error
    if how == "iter_samples":
        sizes = [b.shape[0] for b in result.value]
        assert all(0 < s <= batch_size for s in sizes) and sum(sizes) == n
        images = np.concatenate(result.value) if result.value else expected[:0]
    else:
        images = result.value
    assert images.dtype == np.float32 and images.shape == (n, 1, 28, 28)
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)


@bounded(50)
@given(
    images=mostly(
        st.one_of(
            arrays(image_shapes(), dtypes=[np.uint8], low=0, high=1),
            arrays(image_shapes(), dtypes=[np.float16, np.float32, np.float64], low=0, high=1),
        ),
        st.one_of(arrays(image_shapes(), low=0, high=1), NON_ARRAYS),
    ),
    batch_size=mostly(st.integers(1, 4), ints_or_junk((-1, 4))),
    pair=st.booleans(),
)
def test_encode_and_reconstruct(kit: Kit, images: Any, batch_size: Any, pair: bool) -> None:
    """Encoder.encode and reconstruct: the documented conversion (uint8 / 255, float in [0, 1]
    as it is, anything else refused), equal to encoding (and decoding) row by row."""
    x = documented_images(images)
    if pair:
        result = attempt(lambda: reconstruct(kit.encoder, kit.decoder, images))
        valid = x is not None
    else:
        result = attempt(lambda: kit.encoder.encode(images, batch_size=batch_size))
        valid = x is not None and _is_int(batch_size, 1, 1 << 16)
    if not valid:
        assert refused(result), f"accepted {np.asarray(images).dtype} {np.shape(images)}"
        return
    assert not refused(result), result.error
    mu, logvar = ref_encode(kit, x)
    if pair:
        assert result.value.dtype == np.float32 and result.value.shape == x.shape
        np.testing.assert_allclose(result.value, ref_decode(kit, mu), rtol=0, atol=1e-5)
        return
    got_mu, got_logvar = result.value
    for got, want in ((got_mu, mu), (got_logvar, logvar)):
        assert got.dtype == np.float32 and got.shape == (x.shape[0], LATENT)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@bounded(60)
@given(
    n=mostly(st.integers(0, 6), ints_or_junk((-2, 6), refused_above=10**9), 4),
    d=mostly(st.one_of(st.integers(1, 6), st.just(4096)), ints_or_junk((-1, 6)), 4),
    seed=mostly(st.integers(0, 2**63 - 1), ints_or_junk((-2, 5)), 4),
    temperature=mostly(st.floats(0, 1000), reals_or_junk(), 4),
    batch_size=st.one_of(st.none(), st.integers(1, 4), ints_or_junk((-1, 4))),
)
def test_sample_latents(n: Any, d: Any, seed: Any, temperature: Any, batch_size: Any) -> None:
    """sample_latents and iter_latents: README's draw exactly, in batches of at most
    batch_size (iter_latents), or a VaeError."""
    if batch_size is None:
        result = attempt(lambda: sample_latents(n, d, seed, temperature))
    else:
        result = attempt(lambda: list(iter_latents(n, d, seed, temperature, batch_size)))
    valid = (
        _is_int(n, 0, 10**9)
        and _is_int(d, 1, 4096)
        and _is_int(seed, 0, 2**63 - 1)
        and _is_real(temperature, 0, 1000)
        and (batch_size is None or _is_int(batch_size, 1, 1 << 16))
    )
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    expected = documented_latent_draw(n, d, seed, temperature)
    if batch_size is None:
        z = result.value
    else:
        sizes = [b.shape[0] for b in result.value]
        assert all(0 < s <= batch_size for s in sizes) and sum(sizes) == n
        z = np.concatenate(result.value) if result.value else expected[:0]
    assert z.dtype == np.float32 and z.shape == (n, d)
    np.testing.assert_array_equal(z, expected)


VECTORS = st.one_of(
    arrays(
        st.one_of(st.integers(0, 4).map(lambda k: (k,)), st.sampled_from([(), (1, 2), (2, 1)])),
        low=-1e3,
        high=1e3,
    ),
    NON_ARRAYS,
)
METHODS = st.one_of(st.sampled_from(["lerp", "slerp", "SLERP", "", " lerp"]), NON_ARRAYS)


def _documented_vector(z: Any) -> np.ndarray | None:
    """interpolate's rule for an end: a non-empty 1-D numeric vector, finite as float64, whose
    norm is within float32's range (so is every latent on the path)."""
    array = np.asarray(z)
    if array.dtype.kind not in "fiu" or array.ndim != 1 or array.size == 0:
        return None
    a = array.astype(np.float64)
    if not np.isfinite(a).all():
        return None
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(a))
    return a if norm <= float(np.finfo(np.float32).max) else None


@bounded(80)
@st.composite
def latent_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """Two ends of the same size (any numeric dtype, values up to 1e3, or up to float64's
    range), or two of anything."""
    if draw(st.booleans()):
        return draw(VECTORS), draw(VECTORS)
    d = draw(st.integers(1, 4))
    wide = draw(st.booleans())
    low, high = (-1e300, 1e300) if wide else (-1e3, 1e3)
    return tuple(  # type: ignore[return-value]
        draw(arrays(st.just((d,)), dtypes=FLOATS_AND_INTS, low=low, high=high)) for _ in "ab"
    )


@given(
    ends=latent_pairs(),
    steps=mostly(st.integers(2, 12), ints_or_junk((-1, 12), refused_above=10_000)),
    method=mostly(st.sampled_from(["lerp", "slerp"]), METHODS),
)
def test_interpolate(ends: tuple[Any, Any], steps: Any, method: Any) -> None:
    """interpolate: (steps, d) float32, finite, from z0 to z1 (lerp: the straight line; slerp:
    norms interpolated linearly), or a VaeError."""
    z0, z1 = ends
    result = attempt(lambda: interpolate(z0, z1, steps, method))
    a, b = _documented_vector(z0), _documented_vector(z1)
    valid = (
        a is not None
        and b is not None
        and a.shape == b.shape
        and _is_int(steps, 2, 10_000)
        and isinstance(method, str)
        and method in ("lerp", "slerp")
    )
    if not valid:
        assert refused(result)
        return
    assert a is not None and b is not None
    assert not refused(result), result.error
    path = result.value
    assert path.dtype == np.float32 and path.shape == (steps, a.size)
    assert np.isfinite(path).all()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    scale = max(na, nb)
    tol = {"rtol": 1e-5, "atol": 1e-5 * scale + 1e-43}
    np.testing.assert_allclose(path[0], a, **tol)
    np.testing.assert_allclose(path[-1], b, **tol)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if method == "lerp":
        np.testing.assert_allclose(path, (1 - t) * a + t * b, **tol)
    elif na > 0 and nb > 0 and abs(float(a @ b) / (na * nb)) < 0.999:
        norms = np.linalg.norm(path.astype(np.float64), axis=1)
        np.testing.assert_allclose(norms, (1 - t[:, 0]) * na + t[:, 0] * nb, **tol)


@bounded(50)
@given(
    rows=mostly(st.integers(1, 12), ints_or_junk((-1, 12), refused_above=10_000), 4),
    cols=mostly(st.integers(1, 12), ints_or_junk((-1, 12), refused_above=10_000), 4),
    temperature=mostly(st.floats(0, 1000), reals_or_junk(), 4),
)
def test_manifold_latents(rows: Any, cols: Any, temperature: Any) -> None:
    """manifold_latents: the rows x cols lattice at the prior's quantiles (i + 0.5) / n, times
    the temperature, x rising to the right, y falling downwards; or a VaeError."""
    result = attempt(lambda: manifold_latents(rows, cols, temperature))
    valid = _is_int(rows, 1, 10_000) and _is_int(cols, 1, 10_000) and _is_real(temperature, 0, 1e3)
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    quantile = NormalDist().inv_cdf
    t = float(temperature)
    xs = [quantile((i + 0.5) / cols) * t for i in range(cols)]
    ys = [quantile((i + 0.5) / rows) * t for i in range(rows)][::-1]
    expected = np.array([(x, y) for y in ys for x in xs], dtype=np.float32).reshape(-1, 2)
    assert result.value.dtype == np.float32 and result.value.shape == (rows * cols, 2)
    np.testing.assert_allclose(result.value, expected, rtol=1e-6, atol=1e-30)


GOOD_PICTURE_SHAPES = st.one_of(
    st.tuples(st.integers(0, 4), st.just(1), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
)
PICTURES = mostly(
    arrays(GOOD_PICTURE_SHAPES, dtypes=[np.uint8, np.float32, np.float64], low=-0.5, high=1.5),
    st.one_of(arrays(PICTURE_SHAPES, low=-0.5, high=1.5), NON_ARRAYS),
)


@bounded(80)
@given(images=PICTURES)
def test_to_uint8(images: Any) -> None:
    """to_uint8: uint8 as it is, floats clipped to [0, 1] and rounded, (N, H, W); or a VaeError."""
    result = attempt(lambda: to_uint8(images))
    expected = documented_uint8(images)
    if expected is None:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value.dtype == np.uint8
    np.testing.assert_array_equal(result.value, expected)


def _grid_dims(n_rows: int, n_cols: int, h: int, w: int, padding: int, scale: int) -> tuple:
    return ((n_rows * (h + padding) + padding) * scale, (n_cols * (w + padding) + padding) * scale)


@bounded(80)
@given(
    images=PICTURES,
    rows=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=10**8, numpy=False), 5),
    cols=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=10**8, numpy=False), 5),
    padding=mostly(st.integers(0, 3), ints_or_junk((-1, 3), refused_above=1000, numpy=False), 5),
    scale=mostly(st.integers(1, 3), ints_or_junk((-1, 3), refused_above=64, numpy=False), 5),
)
def test_tile(images: Any, rows: Any, cols: Any, padding: Any, scale: Any) -> None:
    """tile: a black uint8 grid of the documented size with each image in its cell, row by row,
    every pixel repeated `scale` times; or a VaeError."""
    result = attempt(lambda: tile(images, rows, cols, padding, scale))
    pixels = documented_uint8(images)
    valid = (
        pixels is not None
        and _is_int(rows, 1)
        and _is_int(cols, 1)
        and _is_int(padding, 0, 1000)
        and _is_int(scale, 1, 64)
    )
    if valid:
        assert pixels is not None
        n, h, w = pixels.shape
        height, width = _grid_dims(int(rows), int(cols), h, w, int(padding), int(scale))
        valid = n <= int(rows) * int(cols) and height * width <= MAX_GRID_PIXELS
    if not valid:
        assert refused(result)
        return
    assert pixels is not None and not refused(result), result.error
    p, s = int(padding), int(scale)
    n, h, w = pixels.shape
    grid = np.zeros(_grid_dims(int(rows), int(cols), h, w, p, 1), dtype=np.uint8)
    for i in range(n):
        top, left = p + (i // int(cols)) * (h + p), p + (i % int(cols)) * (w + p)
        grid[top : top + h, left : left + w] = pixels[i]
    expected = np.kron(grid, np.ones((s, s), dtype=np.uint8))
    assert result.value.dtype == np.uint8
    np.testing.assert_array_equal(result.value, expected)


@bounded(60)
@given(
    rows=mostly(st.integers(1, 40), ints_or_junk((-1, 40), numpy=False), 5),
    cols=mostly(st.integers(1, 40), ints_or_junk((-1, 40), numpy=False), 5),
    height=mostly(st.integers(1, 40), st.sampled_from(HUGE_INTS[:-1]), 5),
    width=mostly(st.integers(1, 40), st.sampled_from(HUGE_INTS[:-1]), 5),
    padding=mostly(st.integers(0, 5), ints_or_junk((-1, 5), numpy=False), 5),
    scale=mostly(st.integers(1, 5), ints_or_junk((-1, 5), numpy=False), 5),
)
def test_grid_size(rows: Any, cols: Any, height: Any, width: Any, padding: Any, scale: Any) -> None:
    """grid_size: the documented formula in ints within the pixel cap, or a VaeError."""
    result = attempt(lambda: grid_size(rows, cols, height, width, padding, scale))
    valid = (
        _is_int(rows, 1)
        and _is_int(cols, 1)
        and _is_int(padding, 0, 1000)
        and _is_int(scale, 1, 64)
    )
    if valid:
        dims = _grid_dims(int(rows), int(cols), int(height), int(width), int(padding), int(scale))
        valid = dims[0] * dims[1] <= MAX_GRID_PIXELS
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value == dims and all(type(v) is int and v > 0 for v in result.value)


@bounded(50)
@given(
    pixels=mostly(
        arrays(st.lists(st.integers(0, 4), min_size=2, max_size=4).map(tuple), dtypes=[np.uint8]),
        PICTURES,
        5,
    ),
    scale=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=64)),
)
def test_upscale(pixels: Any, scale: Any) -> None:
    """upscale: every pixel of a uint8 (..., H, W) array repeated scale x scale times, or a
    VaeError for anything else."""
    result = attempt(lambda: upscale(pixels, scale))
    picture = isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim >= 2
    if not _is_int(scale, 1, 64) or not picture:
        assert refused(result)
        return
    assert not refused(result), result.error
    s = int(scale)
    out = result.value
    *lead, h, w = pixels.shape
    assert out.dtype == np.uint8 and out.shape == (*lead, h * s, w * s)
    rows, cols = np.arange(h * s) // s, np.arange(w * s) // s
    np.testing.assert_array_equal(out, pixels[..., rows[:, None], cols[None, :]])
