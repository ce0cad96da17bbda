"""The HTTP endpoints: the Open Inference Protocol's V2 REST paths, /samples.png and /metrics.

A request reads top to bottom: the endpoint finds the model in the app's one `State`, reads the
body (capped, inflated), `codec.parse_infer` checks it against the model's tensors, the model
runs (through the runtime's sessions), `codec.encode_response` writes the reply. Any VaeError
on the way is the protocol's error form with its status; the app keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vae_runtime.errors import EXIT_USAGE, InvalidArgumentError, VaeError, check_int
from vae_runtime.images import png_bytes, tile
from vae_runtime.sampling import check_sampling

from .codec import (
    HEADER_LENGTH,
    VERSION,
    NotFoundError,
    NotReadyError,
    RequestError,
    TooLargeError,
    encode_response,
    error_body,
    header_int,
    inflate,
    parse_infer,
    query_number,
)
from .models import Model

if TYPE_CHECKING:
    from .app import State

NOT_LOADED = (
    "not ready: the models are not loaded (the app's lifespan has not run; an ASGI server must "
    "run it, with lifespan events on)"
)
INLINE_ROWS = 64  # batches up to this run on the event loop; larger ones in a worker thread
SAMPLES_QUERY = ("seed", "rows", "cols", "temperature")  # what /samples.png takes
# What GET /v2 lists: the extensions served over HTTP (extensions.py serves all but the first).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository")


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


def error_response(exc: VaeError | str, status: int | None = None) -> Response:
    """The protocol's error form for `exc`: 4xx for the client's mistakes, 500 for ours."""
    if status is None:
        assert isinstance(exc, VaeError)
        status = exc.status if isinstance(exc, RequestError) else 500
        status = 400 if status == 500 and exc.exit_code == EXIT_USAGE else status
    return Response(error_body(str(exc)), status, media_type="application/json")


def answers(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that answers a VaeError in the protocol's error form, one line."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except VaeError as exc:
            return error_response(exc)

    return endpoint


def state(request: Request) -> State:
    """What the app's lifespan loaded (NotReadyError, 503, outside it)."""
    loaded: State | None = getattr(request.app.state, "vae", None)
    if loaded is None:
        raise NotReadyError(NOT_LOADED)
    return loaded


def find_model(models: Mapping[str, Model], name: str, version: str = VERSION) -> Model:
    """The model `name` at `version` (NotFoundError, 404): over HTTP and gRPC alike."""
    if name not in models:
        raise NotFoundError(f"unknown model {name!r}; this server has {', '.join(models)}")
    if version != VERSION:
        raise NotFoundError(f"model {name!r} has no version {version!r} (versions: {VERSION})")
    return models[name]


def _model(request: Request) -> Model:
    params = request.path_params
    return find_model(state(request).models.models, params["name"], params.get("version", VERSION))


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 past `cap` bytes before more than `cap` is read, and
    inflated if it came compressed (tritonclient's request_compression_algorithm)."""
    declared = request.headers.get("content-length")
    if declared is not None and (size := header_int("Content-Length", declared)) > cap:
        raise TooLargeError(f"the body is {size:,} bytes, above the cap of {cap:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLargeError(f"the body is above the cap of {cap:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    return body if encoding in ("", "identity") else inflate(body, encoding, cap)


async def _infer(request: Request) -> Response:
    start = time.perf_counter()
    loaded = state(request)
    config = loaded.config
    name, code, images, phases = request.path_params["name"], 500, 0, None
    try:
        model = _model(request)
        body = await read_body(request, config.max_body_bytes)
        header = request.headers.get(HEADER_LENGTH)
        parsed = parse_infer(
            body, header, model.inputs, model.outputs, model=name, max_batch=config.max_batch
        )
        rows = model.rows(parsed.inputs) if model.rows else len(next(iter(parsed.inputs.values())))
        parsed_at = time.perf_counter()
        if rows <= INLINE_ROWS:  # less work than a hop to a worker thread and back
            results = model.run(parsed.inputs)
        else:  # enough to hold up every other request on the event loop
            results = await run_in_threadpool(model.run, parsed.inputs)
        ran_at = time.perf_counter()
        specs = {s.name: s for s in model.outputs}
        sent = [(specs[n], results[n], binary) for n, binary in parsed.outputs.items()]
        images = len(next(iter(results.values())))
        content, length = encode_response(name, parsed.id, sent)
        code = 200
        phases = _phases(start, parsed_at, ran_at, time.perf_counter())
        if length is None:
            return Response(content, media_type="application/json")
        return Response(
            content,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(length)},
        )
    except VaeError as exc:
        response = error_response(exc)
        code = response.status_code
        return response
    finally:
        loaded.metrics.observe(name, code, time.perf_counter() - start, images, phases)


def _phases(start: float, parsed: float, ran: float, encoded: float) -> dict[str, int]:
    """Nanoseconds of a request's phases, as Triton's statistics name them (no queue here)."""
    ns = 1e9
    return {
        "queue": 0,
        "compute_input": int((parsed - start) * ns),
        "compute_infer": int((ran - parsed) * ns),
        "compute_output": int((encoded - ran) * ns),
    }


async def _live(request: Request) -> Response:
    return json_response({"live": True})  # the process answers; loaded or not is /ready's


async def _ready(request: Request) -> Response:
    state(request)
    return json_response({"ready": True})


async def _model_metadata(request: Request) -> Response:
    return json_response(_model(request).metadata())


async def _model_ready(request: Request) -> Response:
    return json_response({"name": _model(request).name, "ready": True})


async def _samples_png(request: Request) -> Response:
    """vae-generate's grid: the same seed, rows, cols and temperature give the same bytes."""
    loaded = state(request)
    cap = loaded.config.max_grid
    start, code, n = time.perf_counter(), 500, 0
    try:
        query = request.query_params
        unknown = sorted(set(query) - set(SAMPLES_QUERY))
        if unknown:
            raise InvalidArgumentError(
                f"unknown parameter {unknown[0]!r}; /samples.png takes {', '.join(SAMPLES_QUERY)}"
            )
        twice = [key for key in SAMPLES_QUERY if len(query.getlist(key)) > 1]
        if twice:
            raise RequestError(f"parameter {twice[0]!r} is given more than once")
        seed = query_number("seed", query.get("seed", "0"), int)
        rows = query_number("rows", query.get("rows", "5"), int)
        cols = query_number("cols", query.get("cols", "5"), int)
        temperature = query_number("temperature", query.get("temperature", "1"), float)
        check_int("rows", rows, 1, cap)
        check_int("cols", cols, 1, cap)
        n = check_int("rows x cols", rows * cols, 1, cap)
        check_sampling(n, seed, temperature)
        decoder = loaded.models.grid

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
        loaded.metrics.observe("samples.png", code, time.perf_counter() - start, n)


async def _metrics(request: Request) -> Response:
    registry = state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) in the protocol's error form."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such endpoint: {request.url.path}; see /v2 and /v2/models/<name>"
    else:
        message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(message, exc.status_code)


def routes(server: str, version: str) -> list[Route]:
    """Every core endpoint, inference first (the router tries them in order): the V2 REST
    paths (health, server and model metadata, readiness, inference), /samples.png and /metrics.
    Triton's extensions (extensions.py) go before them."""

    async def server_metadata(request: Request) -> Response:
        extensions = list(EXTENSIONS)
        return json_response({"name": server, "version": version, "extensions": extensions})

    model = "/v2/models/{name}"
    versioned = model + "/versions/{version}"
    return [
        *(Route(p + "/infer", answers(_infer), methods=["POST"]) for p in (model, versioned)),
        Route("/v2/health/live", _live),
        Route("/v2/health/ready", answers(_ready)),
        Route("/v2", server_metadata),
        *(Route(p, answers(_model_metadata)) for p in (model, versioned)),
        *(Route(p + "/ready", answers(_model_ready)) for p in (model, versioned)),
        Route("/samples.png", answers(_samples_png)),
        Route("/metrics", answers(_metrics)),
    ]
