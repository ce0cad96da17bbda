"""Triton's HTTP extensions beside the protocol's core paths: model configuration (`GET
/v2/models/{name}[/versions/1]/config`), statistics (`GET /v2/models[/{name}[/versions/1]]/stats`)
and the model repository (`POST /v2/repository/index`, and under `--model-control explicit`
`POST /v2/repository/models/{name}/load` and `/unload`)."""

from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .codec import VERSION, RequestError
from .endpoints import answers, find_model, json_response, read_body, state
from .reload import ModelControl

_REPOSITORY_BODY = 64 << 10  # the repository calls' JSON bodies are a few bytes


def _names(request: Request) -> list[str]:
    """The model of the path (checked: 404 for an unknown one), or every model served."""
    models = state(request).models.models
    params = request.path_params
    if "name" not in params:
        return list(models)
    return [find_model(models, params["name"], params.get("version", VERSION)).name]


async def _config(request: Request) -> Response:
    return json_response(
        find_model(
            state(request).models.models,
            request.path_params["name"],
            request.path_params.get("version", VERSION),
        ).config
    )


async def _stats(request: Request) -> Response:
    stats = state(request).metrics.stats.model_stats(_names(request), VERSION)
    return json_response({"model_stats": stats})


async def _body(request: Request) -> dict[str, object]:
    """A repository call's JSON body: an object (an empty body is {})."""
    body = await read_body(request, _REPOSITORY_BODY)
    if not body.strip():
        return {}
    try:
        content = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RequestError("the body is not JSON") from None
    if not isinstance(content, dict):
        raise RequestError("the body must be a JSON object")
    return content


async def _index(request: Request) -> Response:
    loaded = state(request)
    ready = (await _body(request)).get("ready", False)
    if not isinstance(ready, bool):
        raise RequestError("'ready' must be true or false")
    if loaded.control is not None:
        entries = loaded.control.index()
    else:
        names = loaded.models.models
        entries = [{"name": n, "version": VERSION, "state": "READY"} for n in names]
    return json_response([e for e in entries if e["state"] == "READY" or not ready])


def _control(request: Request) -> ModelControl:
    control = state(request).control
    if control is None or state(request).config.model_control != "explicit":
        raise RequestError(
            "explicit model load and unload are off: start vae-serve with --model-control explicit"
        )
    return control


async def _load(request: Request) -> Response:
    control = _control(request)
    if (await _body(request)).get("parameters"):
        raise RequestError("load takes no parameters (a config or files): it re-reads the folder")
    await run_in_threadpool(control.load, request.path_params["name"])
    return json_response({})


async def _unload(request: Request) -> Response:
    control = _control(request)
    await _body(request)
    control.unload(request.path_params["name"])
    return json_response({})


def extension_routes() -> list[Route]:
    """The extensions' routes; they go before the core's (`/v2/models/stats` is no model)."""
    model = "/v2/models/{name}"
    versioned = model + "/versions/{version}"
    repository = "/v2/repository/models/{name}"
    return [
        Route("/v2/models/stats", answers(_stats)),
        *(Route(p + "/stats", answers(_stats)) for p in (model, versioned)),
        *(Route(p + "/config", answers(_config)) for p in (model, versioned)),
        Route("/v2/repository/index", answers(_index), methods=["POST"]),
        Route(repository + "/load", answers(_load), methods=["POST"]),
        Route(repository + "/unload", answers(_unload), methods=["POST"]),
    ]
