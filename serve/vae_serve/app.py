"""The service as an ASGI app: its settings (`ServeConfig`), its metrics and `create_app`.

`create_app(ServeConfig(...))` returns a Starlette app that any ASGI host can run unchanged
(uvicorn in `server.py`, Ray Serve's `serve.ingress` in `ray_serve.py`): its lifespan loads the
graphs (`models.load_models`: the runtime's contract and manifest SHA-256 checks), builds the
app's own Prometheus registry, and drops both at shutdown, all in one `State`. Nothing lives in
module globals; the settings are plain data (they pickle, and travel to uvicorn's worker
processes as JSON).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from vae_runtime import __version__
from vae_runtime.contract import PRECISIONS
from vae_runtime.errors import InvalidArgumentError, check_int
from vae_runtime.sampling import MAX_BATCH_SIZE
from vae_runtime.session import session_options

from .endpoints import http_error, routes
from .extensions import extension_routes
from .models import Models, load_models
from .reload import ModelControl, start_control
from .stats import InferenceStats

SERVER_NAME = "mnist-vae"
CONFIG_ENV = "VAE_SERVE_CONFIG"  # the settings as JSON, for uvicorn's worker processes
MODEL_CONTROLS = ("none", "poll", "explicit")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class ServeConfig:
    """Where the graphs are and the service's caps: plain data, checked by `check()`.

    `onnx_dir`: an export folder (every graph its manifest.json lists is served), or `decoder`
    (and optionally `encoder`) paths. `precision`: which graphs of `onnx_dir` get the plain names
    `decoder`/`encoder`. Caps: `max_batch` rows per request (also the sampler's count),
    `max_body_bytes` per request body, `max_grid` images in one /samples.png, `max_score_rows`
    k x images in one scorer request. `cors_origins`:
    browser origins allowed to call the service (none: CORS off). `model_control`: live model
    updates (reload.py: `poll` watches `onnx_dir` every `poll_seconds`, `explicit` takes
    Triton's load/unload calls)."""

    onnx_dir: Path | None = None
    decoder: Path | None = None
    encoder: Path | None = None
    precision: str = "fp32"
    threads: int | None = 1  # per graph run: requests run side by side, workers scale out
    providers: tuple[str, ...] = ()
    max_batch: int = 1024
    max_body_bytes: int = 16 << 20
    max_grid: int = 1024
    cors_origins: tuple[str, ...] = ()
    max_score_rows: int = 1 << 20  # the scorer's k x images per request (decoder rows)
    model_control: str = "none"  # none | poll (watch onnx_dir) | explicit (repository calls)
    poll_seconds: float = 2.0  # how often poll looks at onnx_dir's manifest.json

    def check(self) -> ServeConfig:
        """Raise InvalidArgumentError for a bad value or combination; return self."""
        if (self.onnx_dir is None) == (self.decoder is None):
            raise InvalidArgumentError("give either --onnx-dir or --decoder (and --encoder)")
        if self.encoder is not None and self.decoder is None:
            raise InvalidArgumentError("--encoder goes with --decoder (or use --onnx-dir)")
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.precision != "fp32" and self.onnx_dir is None:
            raise InvalidArgumentError("--precision picks among the graphs of an --onnx-dir")
        check_int("max batch", self.max_batch, 1, MAX_BATCH_SIZE)
        check_int("max body bytes", self.max_body_bytes, 1024, 1 << 31)
        check_int("max grid", self.max_grid, 1, 1 << 16)
        check_int("max score rows", self.max_score_rows, 1, 1 << 30)
        if self.model_control not in MODEL_CONTROLS:
            raise InvalidArgumentError(
                f"model control must be one of {', '.join(MODEL_CONTROLS)}, "
                f"got {self.model_control!r:.40}"
            )
        if self.model_control == "poll" and self.onnx_dir is None:
            raise InvalidArgumentError("--model-control poll watches an --onnx-dir: give one")
        if not 0.05 <= self.poll_seconds <= 3600:  # also refuses NaN
            raise InvalidArgumentError(
                f"poll seconds must be from 0.05 to 3600, got {self.poll_seconds!r:.40}"
            )
        session_options(self.threads)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values (paths as strings, tuples as lists)."""
        return {
            k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
            for k, v in vars(self).items()
        }

    def to_json(self) -> str:
        """The settings as a JSON object (what uvicorn's worker processes are given)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ServeConfig:
        """Settings from plain values: `to_dict`'s output, a Serve config file's `args`, or
        `serve run ... key=value` strings (numbers as text, lists comma-separated). Checked:
        an unknown name or a bad value is an InvalidArgumentError."""
        unknown = sorted(set(values) - set(_KINDS))
        if unknown:
            raise InvalidArgumentError(
                f"unknown setting {unknown[0]!r}; the service takes {', '.join(_KINDS)}"
            )
        fields: dict[str, Any] = {}
        for key, value in values.items():
            try:
                fields[key] = None if value is None else _KINDS[key](value)
            except (TypeError, ValueError):
                raise InvalidArgumentError(f"setting {key}: {value!r:.60} is not valid") from None
        return cls(**fields).check()

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The settings `to_json` wrote."""
        return cls.from_dict(json.loads(text))


def _strings(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not all(isinstance(item, str) for item in items):
        raise TypeError("not a list of strings")
    return tuple(item for item in items if item)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("not a number")
    return float(value)


def _integer(value: Any) -> int:
    if isinstance(value, bool | float):
        raise TypeError("not an integer")
    return int(value)


# How each setting is read from plain values: the one list of the service's settings.
_KINDS: dict[str, Callable[[Any], Any]] = {
    "onnx_dir": Path,
    "decoder": Path,
    "encoder": Path,
    "precision": str,
    "threads": _integer,
    "providers": _strings,
    "max_batch": _integer,
    "max_body_bytes": _integer,
    "max_grid": _integer,
    "cors_origins": _strings,
    "max_score_rows": _integer,
    "model_control": str,
    "poll_seconds": _number,
}


class Metrics:
    """The app's own Prometheus registry: requests by model and status, latency by model, the
    statistics extension's tallies (`stats`), which export is served and how reloads went."""

    def __init__(self, names: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self.stats = InferenceStats(names)
        self.registry.register(self.stats)
        self.reloads = Counter(
            "vae_serve_model_reloads",
            "New exports seen in the model folder (--model-control), by outcome: loaded, refused.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("loaded", "refused"):
            self.reloads.labels(outcome)
        self.export = Gauge(
            "vae_serve_export_info",
            "The export served: its manifest.json's SHA-256 (1 for the one served).",
            ["export_sha256", "exported_at"],
            registry=self.registry,
        )
        self.requests = Counter(
            "vae_serve_requests",
            "Inference and /samples.png requests answered, by model and HTTP status.",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vae_serve_request_seconds",
            "Time from the request's arrival to its response, by model.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "vae_serve_images",
            "Images decoded or encoded, by model.",
            ["model"],
            registry=self.registry,
        )
        # Each model's series, looked up once (labels() takes a lock and builds a key); each
        # known model shows from the start, at zero; any other name counts as "unknown", so
        # that clients cannot grow the label set.
        self._series = {
            name: (self.latency.labels(name), self.images.labels(name))
            for name in [*names, "unknown"]
        }
        self._counts: dict[tuple[str, int], Any] = {}

    def serving(self, models: Models) -> None:
        """Models now served (at start and at each swap): their series, and their export."""
        for name in models.models:
            if name not in self._series:
                self._series[name] = (self.latency.labels(name), self.images.labels(name))
        self.stats.add(models.models)
        self.export.clear()
        export = models.export
        if export:
            self.export.labels(export["export_sha256"], export.get("exported_at", "")).set(1)

    def observe(
        self,
        model: str,
        code: int,
        seconds: float,
        images: int,
        phases: Mapping[str, int] | None = None,
    ) -> None:
        """One request answered; `phases`: nanoseconds by phase (stats.PHASES) of a success."""
        self.stats.record(model, code == 200, int(seconds * 1e9), images, phases)
        label = model if model in self._series else "unknown"
        latency, count = self._series[label]
        requests = self._counts.get((label, code))
        if requests is None:  # status codes are few: a series for each that happened
            requests = self._counts[label, code] = self.requests.labels(label, str(code))
        requests.inc()
        latency.observe(seconds)
        if images:
            count.inc(images)


@dataclass
class State:
    """What the lifespan made, at `app.state.vae`: the settings, the loaded models and the
    app's metrics (gone again after shutdown). A model update (reload.py) swaps `models` by
    one reference assignment: a request reads it once, at its start, and finishes on it."""

    config: ServeConfig
    models: Models
    metrics: Metrics
    control: ModelControl | None = None  # under --model-control poll|explicit


def create_app(config: ServeConfig, models: Models | None = None) -> Starlette:
    """The service as a Starlette app. Its lifespan loads the graphs `config` names (unless
    `models` were loaded already, as `vae-serve` does to refuse bad graphs before binding) and
    builds the app's Prometheus registry; shutdown lets them go."""
    config.check()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = models if models is not None else load_models(config)
        app.state.vae = vae = State(config, loaded, Metrics([*loaded.models, "samples.png"]))
        vae.metrics.serving(loaded)
        vae.control = control = start_control(vae)
        try:
            yield
        finally:
            if control is not None:
                control.stop()
            del app.state.vae  # the sessions go with it

    middleware = []
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type", "Inference-Header-Content-Length"],
                expose_headers=["Inference-Header-Content-Length"],
            )
        )
    return Starlette(
        routes=[*extension_routes(), *routes(SERVER_NAME, __version__)],
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


def worker_app() -> Starlette:
    """The app of one uvicorn worker process (`--workers`): the settings come as JSON in
    VAE_SERVE_CONFIG, which `vae-serve` sets before uvicorn starts the workers."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))
