"""vae-score's work (split from `tasks` for size): score images with `Scorer`, stream the rows to
a CSV through `fileio.Outputs`, and summarise.

Every argument is checked before a graph is loaded; the inputs are listed from their headers
(`sources.list_sources`), then read and scored a chunk at a time, so memory stays flat in the
number of images. A threshold is a bound in nats (`-150`) or a percentile of the manifest's
reference (`p0.1`: the score below which 0.1% of the reference images fall); it is compared with
the reference's statistic (the IWAE bound), strictly: an image is under it when its score is
lower.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import MANIFEST_FILE, PRECISIONS
from .errors import (
    EXIT_BELOW_THRESHOLD,
    BelowThreshold,
    DataError,
    InvalidArgumentError,
    check_float,
    check_int,
)
from .fileio import Outputs
from .inputs import MAX_INPUTS
from .reference import ScoreReference
from .sampling import MAX_SEED, check_batch_size
from .scoring import DEFAULT_K, Scorer, Scores, check_k
from .session import session_options
from .sources import iter_images, list_sources

COLUMNS = ("source", "index", "elbo", "iwae", "bce", "percentile")
LOWEST = 5  # images the summary names
CHUNK = 1024  # images read and scored per step (the scorer bounds its own decoder rows)
MAX_EXIT_CODE = 125  # above it the shell's own codes (126, 127) and signals (128 + n)
_PERCENTILE = re.compile(r"p(\d+(?:\.\d*)?|\.\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Threshold:
    """A threshold as given: `nats`, or `percentile` of the reference (then resolved)."""

    text: str
    nats: float | None = None
    percentile: float | None = None

    def resolve(self, reference: ScoreReference | None) -> float:
        """The threshold in nats; a percentile needs the reference (InvalidArgumentError)."""
        if self.percentile is None:
            assert self.nats is not None
            return self.nats
        if reference is None:
            raise InvalidArgumentError(
                f"--threshold {self.text} is a percentile of the score reference, and the "
                "manifest has none (exported before it existed); give a value in nats, or "
                "re-export the model with this mnist-vae"
            )
        table = np.asarray(reference.quantiles)
        levels = np.linspace(0.0, 100.0, len(table))
        return float(np.interp(self.percentile, levels, table))


def parse_threshold(text: str) -> Threshold:
    """`p0.1` (a percentile, 0..100) or a finite number of nats; else InvalidArgumentError."""
    value = text.strip()
    match = _PERCENTILE.fullmatch(value)
    if match:
        number = check_float("threshold percentile", float(match.group(1)), 0.0, 100.0)
        return Threshold(value, percentile=number)
    try:
        nats = float(value)
    except ValueError:
        raise InvalidArgumentError(
            f"threshold must be a bound in nats (e.g. -150) or a percentile of the reference "
            f"(e.g. p0.1), got {text!r:.60}"
        ) from None
    return Threshold(value, nats=check_float("threshold", nats, -math.inf, math.inf))


@dataclass(frozen=True)
class ScoreRun:
    """What a vae-score run did: its summary, and the images under the threshold."""

    summary: str
    count: int
    under: int
    below_threshold_exit: int | None

    def raise_if_under(self) -> None:
        """BelowThreshold (the asked exit code) when asked and any image scored under."""
        if self.below_threshold_exit is not None and self.under:
            raise BelowThreshold(
                f"{self.under:,} of {self.count:,} images scored under the threshold (exit "
                f"{self.below_threshold_exit}, as --below-threshold-exit asks)",
                self.below_threshold_exit,
            )


def write_scores(
    inputs: Sequence[Path],
    onnx_dir: Path,
    out: Path = Path("scores.csv"),
    *,
    k: int = DEFAULT_K,
    seed: int = 0,
    precision: str = "fp32",
    threshold: str | None = None,
    below_threshold_exit: int | None = None,
    count: int | None = None,
    batch_size: int | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    force: bool = False,
) -> ScoreRun:
    """Score the images of `inputs` (image files, folders, .npy, IDX; `sources`) with the
    export folder's encoder and decoder of `precision`: one CSV row per image at `out` (COLUMNS;
    percentile empty without a reference), image j's k draws from (seed, j). `count`: the first
    that many images only. `batch_size`: decoder rows per run (k x images; the scorer's
    default). An existing `out` is replaced only with `force`."""
    check_k(k)
    check_int("seed", seed, 0, MAX_SEED)
    if precision not in PRECISIONS:
        raise InvalidArgumentError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r:.40}"
        )
    limit = MAX_INPUTS if count is None else check_int("count", count, 1, MAX_INPUTS)
    gate = None if threshold is None else parse_threshold(threshold)
    if below_threshold_exit is not None:
        check_int(
            "--below-threshold-exit", below_threshold_exit, EXIT_BELOW_THRESHOLD, MAX_EXIT_CODE
        )
        if gate is None:
            raise InvalidArgumentError(
                "--below-threshold-exit needs a --threshold to compare the scores with"
            )
    if batch_size is not None:
        check_batch_size(batch_size)
    session_options(threads)
    onnx_dir = Path(onnx_dir)
    if not onnx_dir.is_dir():
        raise DataError(f"{onnx_dir}: no such folder; --onnx-dir is the folder vae-export wrote")
    sources = list_sources(inputs)
    if not any(s.count for s in sources):
        raise DataError("the inputs hold no images")
    reads = [*onnx_dir.glob("*.onnx"), onnx_dir / MANIFEST_FILE, *(s.path for s in sources)]

    with Outputs([out], reads=reads, force=force, create_dirs=True) as outputs:
        scorer = Scorer.load(onnx_dir, precision=precision, threads=threads, providers=providers)
        reference = scorer.reference
        bound = None if gate is None else gate.resolve(reference)
        statistic = "iwae" if reference is None else reference.statistic
        names: list[str] = []
        values: list[np.ndarray] = []  # the statistic, per chunk
        means = np.zeros(3)  # running sums of elbo, iwae, bce
        f = outputs.open(out)
        f.write(_csv([COLUMNS]))
        for images, chunk_names, start in iter_images(sources, limit, CHUNK):
            scores = scorer.score(images, k=k, seed=seed, start=start, batch_size=batch_size)
            mine = scores.iwae if statistic == "iwae" else scores.elbo
            percent = None if reference is None else reference.percentile(mine)
            f.write(_csv(_rows(chunk_names, start, scores, percent)))
            names.extend(chunk_names)
            values.append(mine)
            means += [scores.elbo.sum(), scores.iwae.sum(), scores.bce.sum()]
        outputs.commit()
    every = np.concatenate(values)  # (N,) float64: 8 bytes an image
    n = every.size
    under = 0 if bound is None else int((every < bound).sum())
    lines = [f"{n:,} images scored (k {k}, seed {seed}{_not_fp32(precision)}) -> {out}"]
    elbo, iwae, bce = means / n
    lines.append(f"mean: iwae {iwae:.2f}, elbo {elbo:.2f}, bce {bce:.2f} nats per image")
    if reference is not None:
        lines.append(_reference_line(reference, k))
    lines.append(f"lowest {statistic}:")
    for j in np.argsort(every, kind="stable")[:LOWEST]:
        where = "" if reference is None else f"  p{float(reference.percentile(every[j])):.2f}"
        lines.append(f"  {every[j]:9.2f} nats{where}  #{j}  {names[j]}")
    if gate is not None and bound is not None:
        said = f"{bound:.2f} nats"
        said = said if gate.percentile is None else f"{gate.text} = {said}"
        lines.append(f"under the threshold ({statistic} < {said}): {under:,} of {n:,}")
    return ScoreRun("\n".join(lines), n, under, below_threshold_exit)


def _rows(
    names: list[str], start: int, scores: Scores, percent: np.ndarray | None
) -> list[list[str]]:
    """CSV rows; numbers as Python writes floats (shortest text that reads back exactly)."""
    return [
        [
            name,
            str(start + i),
            repr(float(scores.elbo[i])),
            repr(float(scores.iwae[i])),
            repr(float(scores.bce[i])),
            "" if percent is None else repr(float(percent[i])),
        ]
        for i, name in enumerate(names)
    ]


def _csv(rows: Sequence[Sequence[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode("utf-8", "surrogateescape")


def _reference_line(reference: ScoreReference, k: int) -> str:
    line = (
        f"reference: {reference.source}, {reference.count:,} images, mean {reference.statistic} "
        f"{reference.mean:.2f} nats (k {reference.k}, seed {reference.seed})"
    )
    if k != reference.k:  # the bound tightens with k: percentiles lean towards typical above it
        line += f"; scored here at k {k}, so percentiles are approximate"
    return line


def _not_fp32(precision: str) -> str:
    return "" if precision == "fp32" else f", {precision} graphs"
