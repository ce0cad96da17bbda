"""`vae-serve`: the graphs as an HTTP inference service speaking the Open Inference Protocol.

`create_app(ServeConfig(...))` returns a Starlette app that any ASGI host can run unchanged
(uvicorn here, Ray Serve's `serve.ingress`): its lifespan loads the graphs through the runtime's
`Decoder`/`Encoder` (contract and manifest SHA-256 checks), builds the app's own Prometheus
registry, and drops both at shutdown. Nothing lives in module globals; the config is plain data
(it pickles, and travels to uvicorn's worker processes as JSON).

Models: every graph of the export folder's manifest, the chosen precision's pair as `decoder` and
`encoder`, the others as `decoder_int8`, `encoder_fp16`, ...; and `sampler` (seed, count,
temperature in, the images `vae-generate` draws out). `/samples.png` is `vae-generate`'s grid.
The command line is `serve_cli.py`; the Ray Serve deployment of this app is `cluster.py`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import __version__, oip, signals
from .contract import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    IMAGE_SHAPE,
    MANIFEST_FILE,
    PRECISIONS,
    Manifest,
    graph_file,
)
from .errors import (
    InvalidArgumentError,
    ModelFileError,
    VaeError,
    check_int,
)
from .images import png_bytes, tile
from .oip import (
    INLINE_ROWS,
    NOT_LOADED,
    Model,
    NotReadyError,
    Service,
    TensorSpec,
    answers,
    error_response,
)
from .sampling import MAX_BATCH_SIZE, check_sampling
from .session import Decoder, Encoder, check_pair, session_options

SERVER_NAME = "mnist-vae"
CONFIG_ENV = "VAE_SERVE_CONFIG"  # the config as JSON, for uvicorn's worker processes
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_QUERY = ("seed", "rows", "cols", "temperature")  # what /samples.png takes


@dataclass(frozen=True)
class ServeConfig:
    """Where the graphs are and the service's caps: plain data, checked by `check()`.

    `onnx_dir`: an export folder (every graph its manifest.json lists is served), or `decoder`
    (and optionally `encoder`) paths. `precision`: which graphs of `onnx_dir` get the plain names
    `decoder`/`encoder`. Caps: `max_batch` rows per request (also the sampler's count),
    `max_body_bytes` per request body, `max_grid` images in one /samples.png. `cors_origins`:
    browser origins allowed to call the service (none: CORS off)."""

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
        session_options(self.threads)
        return self

    def to_json(self) -> str:
        """The config as a JSON object (paths as strings)."""
        return json.dumps(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}
        )

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """The config `to_json` wrote."""
        raw = json.loads(text)
        for key in ("onnx_dir", "decoder", "encoder"):
            raw[key] = None if raw[key] is None else Path(raw[key])
        for key in ("providers", "cors_origins"):
            raw[key] = tuple(raw[key])
        return cls(**raw)


def _graph_parameters(graph: Decoder | Encoder) -> dict[str, Any]:
    info, entry = graph.info, graph.entry
    params: dict[str, Any] = {
        "role": info.role,
        "latent_dim": info.latent_dim,
        "precision": graph.precision,
        "file": graph.path.name,
        "producer_version": info.producer_version,
        "source": info.source,
        "training": info.training,
    }
    if entry is not None:
        params["sha256"] = entry.sha256
        if entry.quality:
            params["quality"] = entry.quality
    return params


def _decoder_model(name: str, decoder: Decoder) -> Model:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {DECODER_OUTPUT: decoder.decode(inputs[DECODER_INPUT])}

    return Model(
        name,
        (TensorSpec(DECODER_INPUT, "FP32", (-1, decoder.latent_dim)),),
        (TensorSpec(DECODER_OUTPUT, "FP32", (-1, *IMAGE_SHAPE)),),
        _graph_parameters(decoder),
        run,
    )


def _encoder_model(name: str, encoder: Encoder) -> Model:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(ENCODER_OUTPUTS, encoder.encode(inputs[ENCODER_INPUT]), strict=True))

    return Model(
        name,
        (TensorSpec(ENCODER_INPUT, "FP32", (-1, *IMAGE_SHAPE)),),
        tuple(TensorSpec(n, "FP32", (-1, encoder.latent_dim)) for n in ENCODER_OUTPUTS),
        _graph_parameters(encoder),
        run,
    )


def _sampler_model(decoder: Decoder, max_batch: int) -> Model:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seed, count = int(inputs["seed"][0]), int(inputs["count"][0])
        temperature = float(inputs["temperature"][0]) if "temperature" in inputs else 1.0
        check_sampling(count, seed, temperature)
        check_int("count", count, 1, max_batch)
        return {DECODER_OUTPUT: decoder.sample(count, seed, temperature)}

    params = {**_graph_parameters(decoder), "draws": "numpy default_rng(seed), as vae-generate"}
    return Model(
        "sampler",
        (
            TensorSpec("seed", "INT64", (1,)),
            TensorSpec("count", "INT64", (1,)),
            TensorSpec("temperature", "FP64", (1,), optional=True),
        ),
        (TensorSpec(DECODER_OUTPUT, "FP32", (-1, *IMAGE_SHAPE)),),
        params,
        run,
        platform="mnist-vae_sampler",
        rows=lambda inputs: int(inputs["count"][0]),
    )


@dataclass
class Models:
    """The loaded graphs by served name; `grid` is the decoder behind `sampler` and /samples.png."""

    models: dict[str, Model]
    grid: Decoder


def load_models(config: ServeConfig) -> Models:
    """Load every graph `config` names, checked as the runtime checks them (ModelFileError)."""
    config.check()
    threads, providers = config.threads, config.providers or None
    graphs: dict[str, Decoder | Encoder] = {}
    if config.onnx_dir is not None:
        path = Path(config.onnx_dir) / MANIFEST_FILE
        if not path.is_file():
            raise ModelFileError(
                f"{config.onnx_dir}: no {MANIFEST_FILE}; give the folder vae-export wrote, or "
                "name the graphs with --decoder/--encoder"
            )
        listed = Manifest.load(path).files
        for role in ("decoder", "encoder"):  # the contract's ROLES, decoder first
            kind = Decoder if role == "decoder" else Encoder
            for precision in PRECISIONS:
                file = graph_file(role, precision)
                if file in listed:
                    name = role if precision == config.precision else f"{role}_{precision}"
                    graphs[name] = kind.load(
                        Path(config.onnx_dir) / file, threads=threads, providers=providers
                    )
        if "decoder" not in graphs:
            raise ModelFileError(
                f"{path} lists no {config.precision} decoder "
                f"({graph_file('decoder', config.precision)}); choose another --precision"
            )
    else:
        assert config.decoder is not None  # check() saw to it
        graphs["decoder"] = Decoder.load(config.decoder, threads=threads, providers=providers)
        if config.encoder is not None:
            graphs["encoder"] = Encoder.load(config.encoder, threads=threads, providers=providers)
    decoder = graphs["decoder"]
    assert isinstance(decoder, Decoder)
    encoder = graphs.get("encoder")
    if isinstance(encoder, Encoder):
        check_pair(encoder, decoder)
    models = {
        name: _decoder_model(name, g) if isinstance(g, Decoder) else _encoder_model(name, g)
        for name, g in graphs.items()
    }
    models["sampler"] = _sampler_model(decoder, config.max_batch)
    return Models(models, decoder)


class _Metrics:
    """The app's own Prometheus registry: requests by model and status, latency by model."""

    def __init__(self, names: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
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

    def observe(self, model: str, code: int, seconds: float, images: int) -> None:
        label = model if model in self._series else "unknown"
        latency, count = self._series[label]
        requests = self._counts.get((label, code))
        if requests is None:  # status codes are few: a series for each that happened
            requests = self._counts[label, code] = self.requests.labels(label, str(code))
        requests.inc()
        latency.observe(seconds)
        if images:
            count.inc(images)


@dataclass(frozen=True)
class _State:
    """What the lifespan made: the app's graphs and metrics (gone again after shutdown)."""

    config: ServeConfig
    models: Models
    metrics: _Metrics


def _state(request: Request) -> _State:
    state: _State | None = getattr(request.app.state, "vae", None)
    if state is None:
        raise NotReadyError(NOT_LOADED)
    return state


def _query_number(name: str, text: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise InvalidArgumentError(f"{name} must be {what}, got {text!r:.40}") from None


async def _samples_png(request: Request) -> Response:
    """vae-generate's grid: the same seed, rows, cols and temperature give the same bytes."""
    state = _state(request)
    start, code, n = time.perf_counter(), 500, 0
    try:
        query = request.query_params
        unknown = sorted(set(query) - set(_QUERY))
        if unknown:
            raise InvalidArgumentError(
                f"unknown parameter {unknown[0]!r}; /samples.png takes {', '.join(_QUERY)}"
            )
        seed = _query_number("seed", query.get("seed", "0"), int)
        rows = _query_number("rows", query.get("rows", "5"), int)
        cols = _query_number("cols", query.get("cols", "5"), int)
        temperature = _query_number("temperature", query.get("temperature", "1"), float)
        check_int("rows", rows, 1, state.config.max_grid)
        check_int("cols", cols, 1, state.config.max_grid)
        n = check_int("rows x cols", rows * cols, 1, state.config.max_grid)
        check_sampling(n, seed, temperature)
        decoder = state.models.grid

        def draw() -> bytes:  # as tasks.write_samples: sample, tile with its defaults, encode
            return png_bytes(tile(decoder.sample(n, seed, temperature), rows, cols))

        # PNG encoding is most of the work (~1 ms for 5x5); as for inference, a small grid
        # costs less on the event loop than a hop to a thread (measured: bench/serve_speed.py,
        # p99 and CPU per request both lower), a large one would hold up the other requests.
        content = draw() if n <= INLINE_ROWS else await run_in_threadpool(draw)
        code = 200
        return Response(content, media_type="image/png")
    except VaeError as exc:
        response, n = error_response(exc), 0
        code = response.status_code
        return response
    finally:
        state.metrics.observe("samples.png", code, time.perf_counter() - start, n)


async def _metrics(request: Request) -> Response:
    registry = _state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.url.path}; see /v2 and /v2/models/<name>"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(message, exc.status_code)


def create_app(config: ServeConfig, models: Models | None = None) -> Starlette:
    """The service as a Starlette app. Its lifespan loads the graphs `config` names (unless
    `models` were loaded already, as `vae-serve` does to refuse bad graphs before binding) and
    builds the app's Prometheus registry; shutdown lets them go."""
    config.check()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loaded = models if models is not None else load_models(config)
        metrics = _Metrics([*loaded.models, "samples.png"])
        app.state.vae = _State(config, loaded, metrics)
        app.state.oip = Service(
            loaded.models, config.max_batch, config.max_body_bytes, metrics.observe
        )
        try:
            yield
        finally:
            del app.state.vae, app.state.oip  # the sessions go with them

    routes = [
        *oip.routes(SERVER_NAME, __version__),
        Route("/samples.png", answers(_samples_png)),
        Route("/metrics", answers(_metrics)),
    ]
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
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


def worker_app() -> Starlette:
    """The app of one uvicorn worker process (`--workers`): the config comes as JSON in
    VAE_SERVE_CONFIG, which `vae-serve` sets before uvicorn starts the workers."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise InvalidArgumentError(f"--host {host!r} is not an address ({detail})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        fix = "stop what uses it or choose another --port"
        if exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose another --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "give an address of this machine as --host"
        raise VaeError(f"cannot listen on {host}:{port}: {exc.strerror}; {fix}") from None
    sock.set_inheritable(True)  # uvicorn's worker processes serve from the same socket
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class Listen:
    """How `vae-serve` runs the app: address, uvicorn workers, logging, the drain limit."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    access_log: bool = False
    drain_seconds: int = 30

    def check(self) -> Listen:
        check_int("port", self.port, 0, 65535)
        check_int("workers", self.workers, 1, 64)
        check_int("drain seconds", self.drain_seconds, 0, 3600)
        if self.log_level not in _LOG_LEVELS:
            raise InvalidArgumentError(
                f"log level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        return self


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(config: ServeConfig, listen: Listen, announce: Callable[[str], None]) -> str:
    """Load the graphs (a bad one is refused before the port is bound), bind, serve until
    SIGTERM or SIGINT, drain the requests in flight, and return what happened. `announce` gets
    the line naming the models and the URL once the port is bound."""
    config.check()
    listen.check()
    models = load_models(config)
    sock = _listen(listen.host, listen.port)
    announce(
        f"serving {', '.join(models.models)} at {_url(sock)} (V2: /v2/models/<name>/infer; "
        "/samples.png; /metrics)"
    )
    return _run_uvicorn(config, listen, models, sock)  # pragma: no cover  (see _run_uvicorn)


# Runs in vae-serve's own process only (tests/serve/test_serve.py starts it, signals it and
# checks its exit code and output; coverage is measured in-process).
def _run_uvicorn(  # pragma: no cover
    config: ServeConfig, listen: Listen, models: Models, sock: socket.socket
) -> str:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # The console script's handlers would turn SIGTERM into an exit 143 mid-request. uvicorn
    # installs its own (graceful: stop accepting, finish what is in flight, run the lifespan's
    # shutdown) and, once done, re-raises the signal to the handler it found: this recorder.
    stops: list[int] = []
    for signum in signals.SIGNALS:
        signal.signal(signum, lambda signum, frame: stops.append(signum))

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                for signum in stops:  # came before uvicorn listened for them
                    self.handle_exit(signum, None)
                yield

    class Supervisor(Multiprocess):  # its handlers queue signals and never re-raise them
        def handle_signals(self) -> None:
            stops.extend(s for s in self.signal_queue if s in signals.SIGNALS)
            super().handle_signals()

    common: dict[str, Any] = {
        "log_level": listen.log_level,
        "access_log": listen.access_log,
        "timeout_graceful_shutdown": listen.drain_seconds,
        "lifespan": "on",
        "server_header": False,
    }
    if listen.workers == 1:
        Server(uvicorn.Config(create_app(config, models), **common)).run(sockets=[sock])
    else:  # each worker loads the graphs itself, from the config it finds in the environment
        os.environ[CONFIG_ENV] = config.to_json()
        app = f"{__name__}:{worker_app.__name__}"
        uv = uvicorn.Config(app, factory=True, workers=listen.workers, **common)
        supervisor = Supervisor(uv, sockets=[sock])
        supervisor.signal_queue.extend(stops)  # came before it listened for them
        supervisor.run()
    signals.ignore_from_now()
    how = f" by {signal.Signals(stops[0]).name}" if stops else ""
    return f"stopped{how}; the requests in flight were answered"
