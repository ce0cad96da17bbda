"""Parity check of exported graphs against a reference (the torch model), on fixed inputs.

Torch-free on purpose: the reference is any callable from a float32 batch to named float32
outputs, so the comparison itself can be tested (and reused) without PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vae_runtime.contract import DECODER_INPUT, ENCODER_INPUT, IMAGE_SHAPE
from vae_runtime.errors import NumericalError
from vae_runtime.session import DEFAULT_PROVIDER, session_options

ATOL = 1e-5  # float32: two backends summing 784 or 400 products in different orders
RTOL = 0.0  # the pass test is |onnx - torch| <= ATOL + RTOL * |torch|, elementwise
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


@dataclass(frozen=True)
class Report:
    """Every comparison of one export, and whether they all passed."""

    comparisons: tuple[Comparison, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)

    def table(self) -> str:
        """A plain-text table, one row per comparison."""
        head = ("graph", "output", "inputs", "batch sizes", "max abs", "max rel", "atol", "pass")
        rows = [
            (
                c.graph,
                c.output,
                c.inputs,
                ",".join(map(str, c.batch_sizes)),
                f"{c.max_abs:.2e}",
                f"{c.max_rel:.2e}",
                f"{c.atol:.0e}",
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
            f"> atol {c.atol:g}"
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
    images = np.asarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
    rng = np.random.default_rng(seed)
    return {
        images_name: np.resize(images, (n, *IMAGE_SHAPE)),  # whole images repeat, C order
        "uniform noise": rng.uniform(0.0, 1.0, (n, *IMAGE_SHAPE)).astype(np.float32),
    }


def decoder_inputs(latent_dim: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """The decoder's verification inputs, each float32 (max batch, latent_dim): N(0, I) scaled
    by LATENT_SCALE, and extreme latents with |z| up to EXTREME_LATENT (every other row at
    exactly +-EXTREME_LATENT in every coordinate)."""
    n = max(BATCH_SIZES)
    rng = np.random.default_rng(seed + 1)
    normal = rng.standard_normal((n, latent_dim)) * LATENT_SCALE
    extreme = rng.uniform(-EXTREME_LATENT, EXTREME_LATENT, (n, latent_dim))
    extreme[::2] = np.sign(extreme[::2]) * EXTREME_LATENT
    return {
        f"N(0,I)*{LATENT_SCALE:g}": normal.astype(np.float32),
        f"extreme |z|<={EXTREME_LATENT:g}": extreme.astype(np.float32),
    }


def compare_graph(
    graph: str,
    path: Path,
    input_name: str,
    reference: Reference,
    cases: Mapping[str, np.ndarray],
    *,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> list[Comparison]:
    """Run the graph at `path` (onnxruntime, CPU) and `reference` on the first b rows of every
    case for every batch size b; one Comparison per (output, case). Shapes that differ or
    values that are not finite count as failures, with an infinite difference."""
    session = _session(graph, path)
    output_names = [o.name for o in session.get_outputs()]
    out: list[Comparison] = []
    for case, data in cases.items():
        worst = {name: [0.0, 0.0, True] for name in output_names}  # max abs, max rel, passed
        for b in batch_sizes:
            batch = np.ascontiguousarray(data[:b])
            got = dict(zip(output_names, session.run(None, {input_name: batch}), strict=True))
            want = reference(batch)
            for name in output_names:
                abs_d, rel_d, ok = _difference(got[name], want.get(name), atol, rtol)
                w = worst[name]
                w[0], w[1], w[2] = max(w[0], abs_d), max(w[1], rel_d), bool(w[2] and ok)
        for name in output_names:
            max_abs, max_rel, ok = worst[name]
            out.append(
                Comparison(graph, name, case, tuple(batch_sizes), max_abs, max_rel, atol, ok)
            )
    return out


def verify_graphs(
    encoder_path: Path,
    decoder_path: Path,
    encode: Reference,
    decode: Reference,
    images: np.ndarray,
    images_name: str,
    latent_dim: int,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> Report:
    """Compare both graphs with their references on the standard inputs (see encoder_inputs,
    decoder_inputs) at BATCH_SIZES. Returns the report; does not raise on disagreement."""
    comparisons = compare_graph(
        "encoder",
        encoder_path,
        ENCODER_INPUT,
        encode,
        encoder_inputs(images, images_name),
        atol=atol,
        rtol=rtol,
    ) + compare_graph(
        "decoder",
        decoder_path,
        DECODER_INPUT,
        decode,
        decoder_inputs(latent_dim),
        atol=atol,
        rtol=rtol,
    )
    return Report(tuple(comparisons))


def _session(graph: str, path: Path) -> ort.InferenceSession:
    try:  # the runtime's own options and provider: verify what users will run
        return ort.InferenceSession(str(path), session_options(), providers=[DEFAULT_PROVIDER])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unloadable graphs
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise VerificationError(
            f"onnxruntime {ort.__version__} cannot load the exported {graph}: {first}; "
            "try a lower --opset"
        ) from None


def _difference(
    got: np.ndarray, want: np.ndarray | None, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Max absolute and relative difference and pass/fail. The relative difference divides by
    max(|want|, atol), so values that are ~0 (saturated sigmoid pixels) do not blow it up."""
    if want is None or got.shape != want.shape:
        return math.inf, math.inf, False
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return math.inf, math.inf, False
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    scale = np.abs(want.astype(np.float64))
    rel = diff / np.maximum(scale, atol) if diff.size else diff
    ok = bool(np.all(diff <= atol + rtol * scale))
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok
