"""Per-model inference statistics: one set of tallies that /metrics renders (a Prometheus
collector) and Triton's statistics extension (`GET /v2/models[/{name}[/versions/1]]/stats`)
reports, so the two cannot disagree.

Each request adds its outcome and duration (success or fail), and a successful one its phases:
`compute_input` (reading and checking the body), `compute_infer` (the graph run, including a
large batch's hop to a worker thread), `compute_output` (encoding the reply) and `queue` (always
0 ns: vae-serve holds no queue, a request runs as it arrives). `inference_count` counts rows
(images), `execution_count` requests that ran, `batch_stats` the phases by rows per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
OUTCOMES = ("success", "fail")
_BATCH_PHASES = PHASES[1:]
_MAX_BATCH_SIZES = 4096  # distinct batch sizes tallied per model (the rest are not itemised)


class _Tally:
    """One model's counts and nanoseconds."""

    def __init__(self) -> None:
        self.durations = {key: [0, 0] for key in (*OUTCOMES, *PHASES)}  # [count, ns]
        self.inferences = 0
        self.executions = 0
        self.last_ms = 0
        self.batches: dict[int, dict[str, list[int]]] = {}


class InferenceStats(Collector):
    """The tallies of each model, updated under one lock (the event loop, worker threads and
    gRPC's threads all record)."""

    def __init__(self, names: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self._models = {name: _Tally() for name in names}

    def add(self, names: Iterable[str]) -> None:
        """Tally these models too (a reload may serve new names); known ones keep their counts."""
        with self._lock:
            for name in names:
                self._models.setdefault(name, _Tally())

    def record(
        self, model: str, ok: bool, total_ns: int, rows: int, phases: Mapping[str, int] | None
    ) -> None:
        """One request of `model` (ignored for a name not tallied): its outcome and duration,
        and for a success its rows and the nanoseconds of each phase measured."""
        tally = self._models.get(model)
        if tally is None:
            return
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            outcome = tally.durations["success" if ok else "fail"]
            outcome[0] += 1
            outcome[1] += total_ns
            tally.last_ms = now_ms
            if not ok:
                return
            tally.inferences += rows
            tally.executions += 1
            batch = tally.batches.get(rows)
            if batch is None and len(tally.batches) < _MAX_BATCH_SIZES:
                batch = tally.batches[rows] = {p: [0, 0] for p in _BATCH_PHASES}
            for phase, ns in (phases or {}).items():
                for where in (tally.durations, batch or {}):
                    if phase in where:
                        where[phase][0] += 1
                        where[phase][1] += ns

    def model_stats(self, names: Iterable[str], version: str) -> list[dict[str, Any]]:
        """Triton's `model_stats` entries of these models, in the statistics extension's form."""

        def duration(pair: list[int]) -> dict[str, int]:
            return {"count": pair[0], "ns": pair[1]}

        out = []
        with self._lock:
            for name in names:
                tally = self._models.get(name) or _Tally()
                out.append(
                    {
                        "name": name,
                        "version": version,
                        "last_inference": tally.last_ms,
                        "inference_count": tally.inferences,
                        "execution_count": tally.executions,
                        "inference_stats": {
                            key: duration(pair) for key, pair in tally.durations.items()
                        },
                        "batch_stats": [
                            {"batch_size": size, **{p: duration(v) for p, v in phases.items()}}
                            for size, phases in sorted(tally.batches.items())
                        ],
                        "memory_usage": [],
                    }
                )
        return out

    def collect(self) -> Iterator[Metric]:
        """The same tallies for /metrics (seconds there, nanoseconds in the JSON)."""
        seconds = CounterMetricFamily(
            "vae_serve_inference_duration_seconds",
            "Time spent, by model and by outcome (success, fail) or phase of the successful "
            "requests (queue, compute_input, compute_infer, compute_output).",
            labels=["model", "phase"],
        )
        counts = CounterMetricFamily(
            "vae_serve_inference_phase",
            "Requests counted in vae_serve_inference_duration_seconds, by model and phase.",
            labels=["model", "phase"],
        )
        rows = CounterMetricFamily(
            "vae_serve_inference_rows", "Rows (images) inferred, by model.", labels=["model"]
        )
        runs = CounterMetricFamily(
            "vae_serve_executions", "Successful requests run, by model.", labels=["model"]
        )
        last = GaugeMetricFamily(
            "vae_serve_last_inference_timestamp_seconds",
            "When the model last answered a request (Unix time; 0: never).",
            labels=["model"],
        )
        with self._lock:
            for name, tally in self._models.items():
                for phase, (count, ns) in tally.durations.items():
                    seconds.add_metric([name, phase], ns / 1e9)
                    counts.add_metric([name, phase], count)
                rows.add_metric([name], tally.inferences)
                runs.add_metric([name], tally.executions)
                last.add_metric([name], tally.last_ms / 1e3)
        yield from (seconds, counts, rows, runs, last)
