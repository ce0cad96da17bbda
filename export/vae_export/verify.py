"""Parity check of exported graphs against a reference (the torch model), on fixed inputs.

The graphs are loaded and run through the runtime's own `Decoder.load`/`Encoder.load` (same
session options, same contract checks, same input checks): export verifies exactly what users
will run. Torch-free on purpose: the reference is any callable from a float32 batch to named
float32 outputs, so the comparison itself can be tested (and reused) without PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vae_runtime.contract import DECODER, ENCODER
from vae_runtime.errors import NumericalError, VaeError
from vae_runtime.session import Decoder, Encoder

ATOL = 1e-5  # float32: two backends summing 784 or 400 products in different orders
RTOL = 0.0  # the pass test is |onnx - torch| <= ATOL + RTOL * (largest |torch| of the sample)
# Outputs unbounded in size get a relative term too: the decoder's logits reach |l| ~ 100 at
# the extreme latents. The term is relative to the sample's largest |torch|, not to each value:
# a float32 sum of 400 products errs by ~6e-7 of the sum of its terms' magnitudes, and a logit
# near 0 can be such a sum (0.069 = terms totalling 121, off by 1.1e-5 between two correct
# backends: the elementwise test refused a correct export of the 10-epoch real-data model).
OUTPUT_RTOL = {"logits": 1e-5}
BATCH_SIZES = (1, 2, 64, 1000)  # 1 and 1000 are the edges a dynamic batch axis must handle
LATENT_SCALE = 3.0  # decoder inputs N(0, I) * 3: well past the prior's typical shell
EXTREME_LATENT = 10.0  # decoder inputs with |z| up to 10: saturates sigmoid, large logits
SEED = 0  # the verification inputs are the same on every export

Reference = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class VerificationError(NumericalError):
    """An exported graph disagrees with the torch model beyond tolerance, or cannot be run."""


@dataclass(frozen=True)
class Comparison:
    """One output of one graph on one kind of input, over all batch sizes."""

    graph: str
    output: str
    inputs: str
    batch_sizes: tuple[int, ...]
    max_abs: float
    max_rel: float
    atol: float
    passed: bool
    rtol: float = 0.0


@dataclass(frozen=True)
class Report:
    """Every comparison of one export, and whether they all passed."""

    comparisons: tuple[Comparison, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def table(self) -> str:
        """A plain-text table, one row per comparison."""
        head = (
            "graph",
            "output",
            "inputs",
            "batch sizes",
            "max abs",
            "max rel",
            "atol",
            "rtol",
            "pass",
        )
        rows = [
            (
                c.graph,
                c.output,
                c.inputs,
                ",".join(map(str, c.batch_sizes)),
                f"{c.max_abs:.2e}",
                f"{c.max_rel:.2e}",
                f"{c.atol:.0e}",
                f"{c.rtol:.0e}" if c.rtol else "0",
                "yes" if c.passed else "NO",
            )
            for c in self.comparisons
        ]
        widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in (head, *rows)
        )

    def failure_message(self) -> str:
        """One line naming each failing output, its largest difference and the tolerance."""
        failed = [c for c in self.comparisons if not c.passed]
        parts = [
            f"{c.graph} output '{c.output}' on {c.inputs}: max abs difference {c.max_abs:.3g} "
            f"> atol {c.atol:g}" + (f" + rtol {c.rtol:g} x max |torch|" if c.rtol else "")
            for c in failed
        ]
        return "ONNX graphs disagree with the torch model: " + "; ".join(parts)

    def to_json(self) -> list[dict[str, object]]:
        """The comparisons as JSON-ready dicts (for manifest.json); NaN/inf become None."""
        rows = []
        for c in self.comparisons:
            row = asdict(c)
            row["batch_sizes"] = list(c.batch_sizes)
            for key in ("max_abs", "max_rel"):
                row[key] = row[key] if math.isfinite(row[key]) else None
            rows.append(row)
        return rows


def encoder_inputs(images: np.ndarray, images_name: str, seed: int = SEED) -> dict[str, np.ndarray]:
    """The encoder's verification inputs, each float32 (max batch, 1, 28, 28) in [0, 1]:
    `images` (repeated to the largest batch size if fewer) and uniform noise."""
    n = max(BATCH_SIZES)
    (image,) = ENCODER.inputs
    shape = image.shape(0)  # (1, 28, 28): no latent-sized axis
    images = np.asarray(images, dtype=np.float32).reshape(-1, *shape)
    rng = np.random.default_rng(seed)
    return {
        images_name: np.resize(images, (n, *shape)),  # whole images repeat, C order
        "uniform noise": rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32),
    }


def decoder_inputs(latent_dim: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """The decoder's verification inputs, each float32 (max batch, latent_dim): N(0, I) scaled
    by LATENT_SCALE, and extreme latents with |z| up to EXTREME_LATENT (every other row at
    exactly +-EXTREME_LATENT in every coordinate)."""
    n = max(BATCH_SIZES)
    (z,) = DECODER.inputs
    shape = (n, *z.shape(latent_dim))  # (n, latent_dim)
    rng = np.random.default_rng(seed + 1)
    normal = rng.standard_normal(shape) * LATENT_SCALE
    extreme = rng.uniform(-EXTREME_LATENT, EXTREME_LATENT, shape)
    extreme[::2] = np.sign(extreme[::2]) * EXTREME_LATENT
    return {
        f"N(0,I)*{LATENT_SCALE:g}": normal.astype(np.float32),
        f"extreme |z|<={EXTREME_LATENT:g}": extreme.astype(np.float32),
    }


def compare_graph(
    graph: Encoder | Decoder,
    reference: Reference,
    cases: Mapping[str, np.ndarray],
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> list[Comparison]:
    """Run `graph` (as loaded by the runtime) and `reference` on the first b rows of every case,
    one graph run of b rows for every batch size b; one Comparison per (output, case). Shapes
    that differ, values that are not finite, or a run the runtime refuses count as failures,
    with an infinite difference."""
    names = [t.name for t in graph.outputs]  # what the graph has (logits: exported with them)
    out: list[Comparison] = []
    for case, data in cases.items():
        worst = {name: (0.0, 0.0, True) for name in names}  # max abs, max rel, passed
        for b in batch_sizes:
            batch = np.ascontiguousarray(data[:b])
            got = _run(graph, batch, names)
            want = reference(batch)
            for name in names:
                tol = max(rtol, OUTPUT_RTOL.get(name, 0.0))
                abs_d, rel_d, ok = _difference(got.get(name), want.get(name), atol, tol)
                w_abs, w_rel, w_ok = worst[name]
                worst[name] = (max(w_abs, abs_d), max(w_rel, rel_d), w_ok and ok)
        for name in names:
            max_abs, max_rel, ok = worst[name]
            tol = max(rtol, OUTPUT_RTOL.get(name, 0.0))
            out.append(
                Comparison(
                    graph.role, name, case, tuple(batch_sizes), max_abs, max_rel, atol, ok, tol
                )
            )
    return out


def _run(graph: Encoder | Decoder, batch: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The graph's outputs on `batch`, in one run, by their declared `names`; empty when the
    runtime refuses them."""
    try:
        if isinstance(graph, Encoder):
            outputs: tuple[np.ndarray, ...] = graph.encode(batch, batch_size=len(batch))
        else:
            outputs = (graph.decode(batch, batch_size=len(batch)),)
            if graph.has_logits:
                outputs += (graph.decode_logits(batch, batch_size=len(batch)),)
        return dict(zip(names, outputs, strict=True))
    except VaeError:  # NaN outputs, a graph that cannot run: a failed comparison, not a crash
        return {}


def verify_graphs(
    encoder: Encoder | Path,
    decoder: Decoder | Path,
    encode: Reference,
    decode: Reference,
    images: np.ndarray,
    images_name: str,
    latent_dim: int,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> Report:
    """Compare both graphs (as the runtime loaded them, or paths it loads here) with their
    references on the standard inputs (see encoder_inputs, decoder_inputs) at BATCH_SIZES.
    Returns the report; does not raise on disagreement (a graph the runtime refuses to load
    raises its error)."""
    encoder = encoder if isinstance(encoder, Encoder) else Encoder.load(encoder)
    decoder = decoder if isinstance(decoder, Decoder) else Decoder.load(decoder)
    comparisons = compare_graph(
        encoder, encode, encoder_inputs(images, images_name), atol=atol, rtol=rtol
    ) + compare_graph(decoder, decode, decoder_inputs(latent_dim), atol=atol, rtol=rtol)
    return Report(tuple(comparisons))


def _difference(
    got: np.ndarray | None, want: np.ndarray | None, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Max absolute and relative difference and pass/fail. Both the relative difference and the
    rtol term are relative to each sample's scale, its largest |want| (max over every axis but
    the batch): rounding in a float32 sum scales with its terms, not with its result, so a value
    near 0 (a saturated pixel, a logit that cancels) is held to its sample's scale; one sample's
    scale never loosens another's."""
    if got is None or want is None or got.shape != want.shape:
        return math.inf, math.inf, False
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return math.inf, math.inf, False
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if not diff.size:
        return 0.0, 0.0, True
    per_sample = np.abs(want.astype(np.float64)).reshape(len(want), -1).max(axis=1)
    scale = per_sample.reshape(-1, *([1] * (want.ndim - 1)))  # broadcasts over each sample
    rel = diff / np.maximum(scale, atol)
    ok = bool(np.all(diff <= atol + rtol * scale))
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok
