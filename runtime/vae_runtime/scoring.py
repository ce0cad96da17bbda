"""Per-image likelihood bounds from the exported pair, torch-free: the ELBO, the IWAE bound, BCE.

For an image x with posterior N(mu, diag(exp(logvar))) and k draws z_i = mu + exp(logvar/2) eps_i,
the log importance weights are log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), with the
Bernoulli likelihood log p(x|z) = sum over 784 pixels of x l - softplus(l) from the decoder's
logits l (stable for any l; the sigmoid output saturates at 1.0 in float32 and loses log(1 - p)).
    elbo = mean_i log w_i           iwae = logsumexp_i log w_i - log k     (nats, per image)
so k = 1 gives iwae == elbo, and iwae >= elbo always. `bce` is the reconstruction BCE of the
posterior mean, as vae-eval's `recon_bce`. The sums and the logsumexp are float64; the draws go
through the decoder in chunks: at most `batch_size` decoder rows at once, whatever k and N are
(the log weights kept per image are 8 bytes each).

Noise: image j of a call (j counted from `start`) draws its (k, latent_dim) standard normals from
numpy's default_rng([seed, j]), float64 then float32; an image's scores depend on (seed, j) only,
never on the batch size or on the other images, so shards and services agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import IMAGE_PIXELS, IMAGE_SHAPE, MANIFEST_FILE, PRECISIONS, Manifest, graph_file
from .errors import InvalidArgumentError, as_array, check_int, check_path
from .reference import ScoreReference
from .sampling import MAX_SEED, check_batch_size
from .session import Decoder, Encoder, _images, check_pair, cpu_count

DEFAULT_K = 64
MAX_K = 100_000
DEFAULT_ROWS = 8192  # decoder rows per run: (8192, 784) float32 logits = 25 MB, ~75 MB of work
_LOG_2PI = math.log(2 * math.pi)
_MIN_PARALLEL_ROWS = 256  # decoder rows below which threads cost more than they save


@dataclass(frozen=True)
class Scores:
    """Per-image bounds, each float64 (N,), nats; higher = more typical of the training data."""

    elbo: np.ndarray  # the evidence lower bound, averaged over the k draws
    iwae: np.ndarray  # log-mean-exp of the k importance weights (k = 1: equal to elbo)
    bce: np.ndarray  # reconstruction BCE of the posterior mean (lower = better reconstructed)

    def __len__(self) -> int:
        return len(self.iwae)


def check_k(k: Any) -> int:
    """Importance samples per image: an integer in 1..MAX_K."""
    return check_int("k (importance samples)", k, 1, MAX_K)


class Scorer:
    """Scores images with an encoder and a decoder that has the logits output.

    >>> scorer = Scorer.load("out")                     # encoder, decoder, reference
    >>> scores = scorer.score(images, k=64, seed=0)     # Scores: elbo, iwae, bce (N,)
    >>> scorer.percentile(scores.iwae)                  # % of test digits scoring lower
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        reference: ScoreReference | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        """`threads`: for the likelihood arithmetic beside the graphs' own (default: one per
        available core, as the sessions)."""
        if not isinstance(encoder, Encoder) or not isinstance(decoder, Decoder):
            raise InvalidArgumentError(
                f"a Scorer takes an Encoder and a Decoder, got {type(encoder).__name__} and "
                f"{type(decoder).__name__}"
            )
        if reference is not None and not isinstance(reference, ScoreReference):
            raise InvalidArgumentError(
                f"reference must be a ScoreReference or None, got {type(reference).__name__}"
            )
        decoder.require_logits()
        check_pair(encoder, decoder)
        self.encoder = encoder
        self.decoder = decoder
        self.reference = reference
        self.latent_dim = decoder.latent_dim
        self._threads = cpu_count() if threads is None else check_int("threads", threads, 1)

    @classmethod
    def load(
        cls,
        onnx_dir: Path | str,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> Scorer:
        """The export folder's encoder and decoder of `precision` (checked against its
        manifest.json), with the manifest's score reference (None in older exports; the
        reference is of the fp32 graphs whatever `precision` is)."""
        folder = check_path("onnx dir", onnx_dir)
        if precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
            )
        # Sessions that do not spin between runs: the likelihood arithmetic runs in between.
        options: dict[str, Any] = {"threads": threads, "providers": providers, "spinning": False}
        decoder = Decoder.load(folder / graph_file("decoder", precision), **options)
        decoder.require_logits()  # before loading the encoder: the likelier problem first
        encoder = Encoder.load(folder / graph_file("encoder", precision), **options)
        manifest_path = folder / MANIFEST_FILE
        manifest = Manifest.load(manifest_path) if manifest_path.is_file() else None
        reference = manifest.score_reference if manifest else None
        return cls(encoder, decoder, reference, threads=threads)

    def score(
        self,
        images: Any,
        *,
        k: int = DEFAULT_K,
        seed: int = 0,
        start: int = 0,
        batch_size: int | None = None,
    ) -> Scores:
        """Score `images` (as `Encoder.encode` takes them: uint8 (N, 28, 28) 0-255, or float
        (N, 1, 28, 28) / (N, 28, 28) in [0, 1]) with `k` draws each from `seed`; image j draws
        from default_rng([seed, start + j]). `batch_size`: decoder rows per run (k x images;
        default DEFAULT_ROWS), the bound on memory."""
        k = check_k(k)
        check_int("seed", seed, 0, MAX_SEED)
        check_int("start", start, 0, MAX_SEED)
        rows = check_batch_size(DEFAULT_ROWS if batch_size is None else batch_size)
        x = _checked_images(images)
        d = self.latent_dim
        return self._score(x, k, rows, lambda first, b: _Draws(seed, start + first, b, d))

    def score_with_noise(self, images: Any, eps: Any, *, batch_size: int | None = None) -> Scores:
        """Score `images` with the given standard normals `eps` (N, k, latent_dim), float, in
        place of drawn ones: the same arithmetic as `score` (for parity tests, and for callers
        with their own noise)."""
        x = _checked_images(images)
        noise = as_array("eps", eps)
        n, d = x.shape[0], self.latent_dim
        if noise.dtype.kind != "f" or noise.ndim != 3 or noise.shape[::2] != (n, d):
            raise InvalidArgumentError(
                f"eps must be floats of shape (N, k, latent_dim) = ({n}, k, {d}), got "
                f"{noise.dtype} {noise.shape}"
            )
        k = check_k(noise.shape[1])
        if not np.isfinite(noise).all():
            raise InvalidArgumentError("eps contains NaN or infinite values")
        rows = check_batch_size(DEFAULT_ROWS if batch_size is None else batch_size)
        return self._score(x, k, rows, lambda first, b: _Given(noise[first : first + b]))

    def percentile(self, values: Any) -> np.ndarray:
        """float64 percentiles (0..100) of `values` against the reference (see
        ScoreReference.percentile); InvalidArgumentError when the scorer has none."""
        if self.reference is None:
            raise InvalidArgumentError(
                "no score reference: these graphs' manifest.json has none (exported before "
                "references existed); re-export them with this mnist-vae for percentiles"
            )
        return self.reference.percentile(values)

    def _score(
        self, x: np.ndarray, k: int, rows: int, noise: Callable[[int, int], _Source]
    ) -> Scores:
        """x: checked images (N, ...); noise(first, b) gives the draws of images first..first+b."""
        n = x.shape[0]
        out = [np.empty(n, np.float64) for _ in range(3)]
        per_block = max(1, rows // k)  # images per block; k > rows: one image, draws chunked
        with ThreadPoolExecutor(self._threads) as pool:
            for first in range(0, n, per_block):
                b = min(per_block, n - first)
                # converted block by block (float32 input is used as it is): never all N at once
                xb = _images(x[first : first + b])
                block = self._block(xb, k, rows, noise(first, b), pool)
                for array, values in zip(out, block, strict=True):
                    array[first : first + b] = values
        return Scores(elbo=out[0], iwae=out[1], bce=out[2])

    def _log_likelihood(
        self, logits: np.ndarray, x: np.ndarray, pool: ThreadPoolExecutor
    ) -> np.ndarray:
        """_log_likelihood split over the pool's threads (numpy releases the GIL): by images,
        or by draws when there are fewer images than threads. Row by row the same bits."""
        b, c = logits.shape[:2]
        parts = self._threads
        if parts == 1 or b * c < _MIN_PARALLEL_ROWS:
            return _log_likelihood(logits, x)
        if b >= parts:
            cuts = np.array_split(np.arange(b), parts)
            jobs = [
                pool.submit(_log_likelihood, logits[i[0] : i[-1] + 1], x[i[0] : i[-1] + 1])
                for i in cuts
            ]
            return np.concatenate([job.result() for job in jobs], axis=0)
        cuts = np.array_split(np.arange(c), parts)
        jobs = [pool.submit(_log_likelihood, logits[:, i[0] : i[-1] + 1], x) for i in cuts]
        return np.concatenate([job.result() for job in jobs], axis=1)

    def _block(
        self, x: np.ndarray, k: int, rows: int, source: _Source, pool: ThreadPoolExecutor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(elbo, iwae, bce) of b images x (b, 1, 28, 28), k draws each, <= rows per run."""
        b, d = x.shape[0], self.latent_dim
        flat = x.reshape(b, IMAGE_PIXELS)  # (b, 784) float32
        mu, logvar = self.encoder.encode(x, batch_size=b)  # (b, d) float32 each
        std = np.exp(np.float32(0.5) * logvar)
        logits_mu = self.decoder._logits_batch(mu).reshape(b, 1, -1)
        bce = -self._log_likelihood(logits_mu, flat, pool)[:, 0]
        logvar_sum = logvar.astype(np.float64).sum(-1)  # (b,)
        # Every log weight is kept (b * k <= max(rows, k) floats): the reductions below then
        # see the same numbers in the same order whatever the chunking, so an image's scores
        # are the same bits at any batch size.
        log_w = np.empty((b, k))
        per_chunk = max(1, rows // b)  # draws per run
        for offset in range(0, k, per_chunk):
            c = min(per_chunk, k - offset)
            eps = source.draw(offset, c)  # (b, c, d) float32
            z = mu[:, None, :] + std[:, None, :] * eps  # (b, c, d) float32
            logits = self.decoder._logits_batch(np.ascontiguousarray(z.reshape(b * c, d)))
            log_px = self._log_likelihood(logits.reshape(b, c, -1), flat, pool)  # (b, c) f64
            z64, e64 = z.astype(np.float64), eps.astype(np.float64)
            log_pz = -0.5 * ((z64 * z64).sum(-1) + d * _LOG_2PI)
            log_qz = -0.5 * ((e64 * e64).sum(-1) + d * _LOG_2PI + logvar_sum[:, None])
            log_w[:, offset : offset + c] = log_px + log_pz - log_qz
        m = log_w.max(-1)  # logsumexp, shifted by the max: no overflow, no underflow to -inf
        iwae = m + np.log(np.exp(log_w - m[:, None]).sum(-1)) - math.log(k)
        return log_w.sum(-1) / k, iwae, bce


class _Source:
    """The standard normals of a block of b images: draw(offset, c) -> float32 (b, c, d), the
    draws offset..offset+c of each image, asked for in order."""

    def draw(self, offset: int, count: int) -> np.ndarray:  # pragma: no cover  (abstract)
        raise NotImplementedError


class _Draws(_Source):
    """Drawn: image i of the block from default_rng([seed, first + i]), continuing its stream
    chunk after chunk (numpy draws the same numbers whole or in row chunks)."""

    def __init__(self, seed: int, first: int, b: int, latent_dim: int) -> None:
        self._gens = [np.random.default_rng([seed, first + i]) for i in range(b)]
        self._d = latent_dim

    def draw(self, offset: int, count: int) -> np.ndarray:
        eps = np.empty((len(self._gens), count, self._d), np.float32)
        for i, gen in enumerate(self._gens):
            eps[i] = gen.standard_normal((count, self._d))  # float64, cast on assignment
        return eps


class _Given(_Source):
    """Given: a caller's (b, k, d) array, sliced."""

    def __init__(self, eps: np.ndarray) -> None:
        self._eps = eps

    def draw(self, offset: int, count: int) -> np.ndarray:
        return self._eps[:, offset : offset + count].astype(np.float32)


def _checked_images(images: Any) -> np.ndarray:
    """`images` as an array of N images, checked as Encoder.encode checks them (shape, dtype,
    finite pixels in [0, 1]) without a float32 copy of them all: (N, 28, 28) or (N, 1, 28, 28)."""
    array = as_array("images", images)
    if array.ndim == 2:
        array = array[None]
    shape_ok = array.ndim in (3, 4) and array.shape[-2:] == IMAGE_SHAPE[1:]
    if not shape_ok or (array.ndim == 4 and array.shape[1] != 1):
        raise InvalidArgumentError(
            f"images must have shape (N, 28, 28) or (N, 1, 28, 28), got {array.shape}"
        )
    _images(array[:1])  # the dtype rules, on one image
    if array.dtype.kind == "f" and array.size:
        low, high = float(array.min()), float(array.max())  # NaN in both if any pixel is
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidArgumentError("images contain NaN or infinite pixels")
        if low < 0.0 or high > 1.0:
            raise InvalidArgumentError(
                f"float image pixels must be in [0, 1], got {low:g}..{high:g} (for 0-255 pixels "
                "pass a uint8 array, or divide by 255)"
            )
    return array


def _log_likelihood(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log p(x|z) = sum_p x_p l_p - softplus(l_p) for logits (b, c, 784) float32 and pixels x
    (b, 784) float32: float64 (b, c). softplus(l) = max(l, 0) + log1p(exp(-|l|)), stable for
    any l. The 784 terms are float32 (each within 1e-7 of its value) summed in float64, each
    row on its own, so a row's result never depends on the rows beside it; the sum is within
    ~1e-5 nats of float64 arithmetic throughout (float32 sums would lose ~1e-4)."""
    terms = logits * x[:, None, :]  # (b, c, 784)
    terms -= np.maximum(logits, np.float32(0))
    tail = np.abs(logits)
    np.negative(tail, out=tail)
    np.exp(tail, out=tail)
    np.log1p(tail, out=tail)  # in (0, log 2]
    terms -= tail
    result: np.ndarray = terms.sum(-1, dtype=np.float64)
    return result
