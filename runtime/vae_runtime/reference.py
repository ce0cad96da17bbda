"""The score reference that travels in manifest.json: the distribution of a bound over test digits.

`vae-export` scores the test set with the runtime's `Scorer` at a fixed k and seed and stores the
1001 quantiles of the per-image bound under manifest["score_reference"]; every consumer (vae-score,
the service, the page) turns a score into a percentile with `ScoreReference.percentile`, without
the test set. `contract` re-exports both names: this module is the manifest's, split off for size.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError, is_int

SCORE_REFERENCE = "score_reference"  # the key under manifest.json's details
QUANTILE_COUNT = 1001  # the q-quantiles for q = 0, 0.001, ..., 1
STATISTICS = ("iwae", "elbo")  # what a reference may be of (nats per image)
_DIGITS = 4  # quantiles and mean are stored rounded to 1e-4 nats (monotone: order survives)
_MAX_TEXT = 200


@dataclass(frozen=True)
class ScoreReference:
    """The distribution of `statistic` (nats per image, higher = more typical) over `count`
    reference images scored with `k` importance samples drawn from `seed`: its QUANTILE_COUNT
    quantiles (ascending) and its mean. Checked on construction (InvalidArgumentError)."""

    statistic: str
    k: int
    seed: int
    count: int
    quantiles: tuple[float, ...]
    mean: float
    source: str = "MNIST test set"

    def __post_init__(self) -> None:
        try:  # numbers of any kind are stored as floats; anything else fails the checks
            object.__setattr__(self, "quantiles", tuple(float(q) for q in self.quantiles))
            object.__setattr__(self, "mean", float(self.mean))
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                "score reference: quantiles and mean must be numbers"
            ) from None
        problem = _problem(self)
        if problem:
            raise InvalidArgumentError(f"score reference: {problem}")

    @classmethod
    def of(
        cls,
        values: Any,
        *,
        k: int,
        seed: int,
        statistic: str = "iwae",
        source: str = "MNIST test set",
    ) -> ScoreReference:
        """The reference of per-image scores `values` (N,), N >= 1, all finite."""
        scores = np.asarray(values, dtype=np.float64).reshape(-1)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise InvalidArgumentError(
                f"a score reference needs finite scores, got {scores.size} values"
            )
        qs = np.quantile(scores, np.linspace(0.0, 1.0, QUANTILE_COUNT))  # linear, ascending
        return cls(
            statistic=statistic,
            k=k,
            seed=seed,
            count=int(scores.size),
            quantiles=tuple(round(float(q), _DIGITS) for q in qs),
            mean=round(float(scores.mean()), _DIGITS),
            source=source,
        )

    @classmethod
    def from_json(cls, data: Any) -> ScoreReference:
        """Read the manifest's entry; InvalidArgumentError names what is wrong."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"score reference: not an object ({type(data).__name__})")
        fields: dict[str, Any] = data
        quantiles = data.get("quantiles")
        if not isinstance(quantiles, list) or not all(
            isinstance(q, int | float) and not isinstance(q, bool) for q in quantiles
        ):
            raise InvalidArgumentError("score reference: 'quantiles' is not a list of numbers")
        mean = data.get("mean")
        if not isinstance(mean, int | float) or isinstance(mean, bool):
            raise InvalidArgumentError(f"score reference: 'mean' is {mean!r:.40}, not a number")
        return cls(
            # missing or mistyped fields fail the checks of __post_init__, naming the field
            statistic=fields.get("statistic", ""),
            k=fields.get("k", 0),
            seed=fields.get("seed", -1),
            count=fields.get("count", 0),
            quantiles=tuple(float(q) for q in quantiles),
            mean=float(mean),
            source=data.get("source", ""),
        )

    def to_json(self) -> dict[str, Any]:
        """The manifest's entry (plain JSON types)."""
        return {
            "statistic": self.statistic,
            "k": self.k,
            "seed": self.seed,
            "count": self.count,
            "quantiles": list(self.quantiles),
            "mean": self.mean,
            "source": self.source,
        }

    def percentile(self, values: Any) -> np.ndarray:
        """float64 percentiles (0..100) of `values` (any shape): the percentage of reference
        images scoring below each, by linear interpolation in the quantile table; 0.0 below the
        reference's minimum, 100.0 above its maximum. NaN stays NaN."""
        x = np.asarray(values, dtype=np.float64)
        table = np.asarray(self.quantiles)
        levels = np.linspace(0.0, 100.0, len(table))
        # Ties (equal quantiles) make np.interp's answer arbitrary within them: take the middle.
        low = np.interp(x, table, levels, left=0.0, right=100.0)
        high = -np.interp(-x, -table[::-1], -levels[::-1], left=-100.0, right=0.0)
        out: np.ndarray = (low + high) / 2.0
        return out


def _problem(ref: ScoreReference) -> str:
    """What breaks the reference's rules, or ''."""
    if ref.statistic not in STATISTICS:
        return f"statistic {ref.statistic!r:.{_MAX_TEXT}}, expected one of {STATISTICS}"
    for name, low in (("k", 1), ("seed", 0), ("count", 1)):
        value = getattr(ref, name)
        if not is_int(value) or value < low:
            return f"{name} is {value!r:.40}, expected an integer >= {low}"
    if not isinstance(ref.source, str) or len(ref.source) > _MAX_TEXT:
        return "source is not a short text"
    q = ref.quantiles
    if len(q) != QUANTILE_COUNT:
        return f"{len(q)} quantiles, expected {QUANTILE_COUNT}"
    if not all(isinstance(v, float) and math.isfinite(v) for v in q):
        return "the quantiles are not all finite numbers"
    if any(b < a for a, b in itertools.pairwise(q)):
        return "the quantiles are not ascending"
    if not (isinstance(ref.mean, float) and math.isfinite(ref.mean)):
        return f"mean is {ref.mean!r:.40}, expected a finite number"
    if not q[0] - 1e-3 <= ref.mean <= q[-1] + 1e-3:  # rounding aside, a mean lies in its range
        return f"mean {ref.mean} lies outside the quantiles' range {q[0]}..{q[-1]}"
    return ""
