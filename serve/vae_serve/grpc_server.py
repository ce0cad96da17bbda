"""gRPC: the Open Inference Protocol's `inference.GRPCInferenceService` (the service
tritonclient.grpc calls), served beside HTTP in the same process from the same models.

The stubs are tritonclient's (`tritonclient.grpc.service_pb2` and `service_pb2_grpc`, generated
from Triton's grpc_service.proto and maintained with it), not vendored .proto files. Each call
reads the app's `State` afresh (a model swap is one reference assignment on it), checks its
tensors with the codec's checks (the same one-line messages as HTTP), runs the model through
the runtime's sessions and answers raw little-endian tensors. A bad request ends its own call
with a status code; the server serves on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from vae_runtime import __version__
from vae_runtime.errors import EXIT_USAGE, VaeError

from .app import SERVER_NAME
from .codec import (
    DTYPES,
    VERSION,
    NotFoundError,
    NotReadyError,
    OverCapError,
    RequestError,
    TensorSpec,
    TooLargeError,
    check_complete,
    check_input,
    check_output,
    check_size,
    from_values,
)
from .endpoints import EXTENSIONS as HTTP_EXTENSIONS
from .endpoints import NOT_LOADED, find_model

if TYPE_CHECKING:
    from .app import State
    from .reload import ModelControl

T = TypeVar("T")
# The typed `contents` field that holds each datatype's values (when not raw_input_contents).
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents"}
STOPPING = "not ready: the server is stopping and takes no new calls"
RAW = "the raw_input_contents size"  # how check_size names what a raw input declares
# The calls served (the service's others, streaming and shared memory among them, are not).
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
)
# tritonclient's messages name the module they were generated as (grpc_service_pb2,
# model_config_pb2), not tritonclient's: pickle, by which Ray Serve passes them between its gRPC
# proxy and the replicas, imports them by those names. Both import this module first.
sys.modules.setdefault(pb.ModelInferRequest.__module__, pb)
sys.modules.setdefault(model_config_pb2.ModelConfig.__module__, model_config_pb2)
# Triton's extensions served over gRPC: HTTP's, but binary_tensor_data (HTTP's own).
EXTENSIONS = tuple(e for e in HTTP_EXTENSIONS if e != "binary_tensor_data")
EXPLICIT_OFF = (
    "explicit model load and unload are off: start vae-serve with --model-control explicit"
)
# What Ray Serve's gRPC proxy registers (grpc_options' grpc_servicer_functions): tritonclient's,
# imported from here so that the aliases above exist in the proxy.
add_GRPCInferenceServiceServicer_to_server = pb_grpc.add_GRPCInferenceServiceServicer_to_server
SERVICER_FUNCTION = f"{__name__}.add_GRPCInferenceServiceServicer_to_server"


def status_code(exc: VaeError) -> grpc.StatusCode:
    """The gRPC status of an error that HTTP answers with `exc.status` (or 500)."""
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, TooLargeError | OverCapError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, RequestError) or exc.exit_code == EXIT_USAGE:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def http_status(exc: VaeError) -> int:
    """The HTTP status the same error gets (what /metrics counts it as)."""
    if isinstance(exc, RequestError):
        return exc.status
    return 400 if exc.exit_code == EXIT_USAGE else 500


def _abort(context: grpc.ServicerContext, exc: VaeError) -> NoReturn:
    context.abort(status_code(exc), " ".join(str(exc).split()))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _tensors(specs: tuple[TensorSpec, ...]) -> list[Any]:
    meta = pb.ModelMetadataResponse.TensorMetadata
    return [meta(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]


class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The protocol's calls over the `State` that `state()` returns at each call (None: not
    loaded, UNAVAILABLE). Method names are the service's."""

    def __init__(self, state: Callable[[], State | None]) -> None:
        self.state = state
        self.stopping = False  # set at SIGTERM: new calls are refused, those in flight finish

    def _loaded(self) -> State:
        if self.stopping:
            raise NotReadyError(STOPPING)
        loaded = self.state()
        if loaded is None:
            raise NotReadyError(NOT_LOADED)
        return loaded

    def _answer(self, context: grpc.ServicerContext, work: Callable[[], T]) -> T:
        try:
            return work()
        except VaeError as exc:
            _abort(context, exc)

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.state() is not None and not self.stopping)

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        loaded = None if self.stopping else self.state()
        models = {} if loaded is None else loaded.models.models
        ready = request.name in models and request.version in ("", VERSION)
        return pb.ModelReadyResponse(ready=ready)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:
            model = find_model(
                self._loaded().models.models, request.name, request.version or VERSION
            )
            return pb.ModelMetadataResponse(
                name=model.name,
                versions=[VERSION],
                platform=model.platform,
                inputs=_tensors(model.inputs),
                outputs=_tensors(model.outputs),
            )

        return self._answer(context, work)

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:  # as POST /v2/repository/index
            loaded = self._loaded()
            if loaded.control is not None:  # every model known, READY or UNAVAILABLE
                entries = loaded.control.index()
            else:
                names = loaded.models.models
                entries = [{"name": n, "version": VERSION, "state": "READY"} for n in names]
            if request.ready:
                entries = [e for e in entries if e["state"] == "READY"]
            return json_format.ParseDict({"models": entries}, pb.RepositoryIndexResponse())

        return self._answer(context, work)

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:  # as POST /v2/repository/models/{name}/load
            self._control().load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return self._answer(context, work)

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:  # as POST /v2/repository/models/{name}/unload
            self._control().unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return self._answer(context, work)

    def _control(self) -> ModelControl:
        loaded = self._loaded()
        if loaded.control is None or loaded.config.model_control != "explicit":
            raise RequestError(EXPLICIT_OFF)
        return loaded.control

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:  # GET /v2/models/{name}/config's JSON, as the proto's message
            models = self._loaded().models.models
            model = find_model(models, request.name, request.version or VERSION)
            config = json_format.ParseDict(model.config, model_config_pb2.ModelConfig())
            return pb.ModelConfigResponse(config=config)

        return self._answer(context, work)

    def ModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:
        def work() -> Any:  # GET /v2/models[/{name}]/stats's JSON, from the same tallies
            loaded = self._loaded()
            models = loaded.models.models
            names = list(models)
            if request.name:
                names = [find_model(models, request.name, request.version or VERSION).name]
            stats = loaded.metrics.stats.model_stats(names, VERSION)
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

        return self._answer(context, work)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        loaded = self._answer(context, self._loaded)
        start, code, images, phases = time.perf_counter(), 500, 0, None
        try:
            config, name = loaded.config, request.model_name
            model = find_model(loaded.models.models, name, request.model_version or VERSION)
            feed = read_inputs(request, model.inputs, model=name, max_batch=config.max_batch)
            names = {s.name for s in model.outputs}
            asked = [check_output(names, o.name, name) for o in request.outputs]
            parsed_at = time.perf_counter()
            results = model.run(feed)
            ran_at = time.perf_counter()
            specs = {s.name: s for s in model.outputs}
            response = pb.ModelInferResponse(model_name=name, model_version=VERSION, id=request.id)
            for out in dict.fromkeys(asked or specs):  # in the order asked; all when none are
                spec = specs[out]
                array = np.ascontiguousarray(results[out], dtype=DTYPES[spec.datatype])
                response.outputs.add(name=out, datatype=spec.datatype, shape=array.shape)
                response.raw_output_contents.append(array.tobytes())
            images, code = len(next(iter(results.values()))), 200
            phases = _phases(start, parsed_at, ran_at, time.perf_counter())
            return response
        except VaeError as exc:
            code = http_status(exc)
            _abort(context, exc)
        finally:
            seconds = time.perf_counter() - start
            loaded.metrics.observe(request.model_name, code, seconds, images, phases)


def _phases(start: float, parsed: float, ran: float, encoded: float) -> dict[str, int]:
    """Nanoseconds of a call's phases, as Triton's statistics name them (no queue here)."""
    return {
        "queue": 0,
        "compute_input": int((parsed - start) * 1e9),
        "compute_infer": int((ran - parsed) * 1e9),
        "compute_output": int((encoded - ran) * 1e9),
    }


class CallAborted(Exception):
    """A call ended with a status code, set on the context it came with."""


class _SetOnly:
    """A context that cannot abort (Ray Serve's RayServegRPCContext): `abort` sets the code
    and details on it and raises CallAborted, which Ray Serve answers with them."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.context.set_code(code)
        self.context.set_details(details)
        raise CallAborted(details)


def answer(servicer: Servicer, method: str, request: Any, context: Any) -> Any:
    """`servicer`'s `method` (one of METHODS) for a context without `abort` (Ray Serve's)."""
    return getattr(servicer, method)(request, _SetOnly(context))


def read_inputs(
    request: Any, inputs: tuple[TensorSpec, ...], *, model: str, max_batch: int
) -> dict[str, np.ndarray]:
    """A ModelInferRequest's input arrays by name: each checked as HTTP checks it (name,
    datatype, shape, batch cap), its values from raw_input_contents (one per input, in order)
    or else from the datatype's typed `contents`."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
            "give one per input, in their order (or none, and typed contents)"
        )
    specs: Mapping[str, TensorSpec] = {s.name: s for s in inputs}
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in arrays:
            raise RequestError(f"input '{name}' is given twice")
        spec, shape = check_input(
            specs, name, tensor.datatype, list(tensor.shape), model=model, max_batch=max_batch
        )
        if raw:
            if tensor.HasField("contents"):
                raise RequestError(f"input '{name}': give raw_input_contents or contents, not both")
            check_size(spec, shape, len(raw[index]), RAW)
            arrays[name] = np.frombuffer(raw[index], DTYPES[spec.datatype]).reshape(shape)
        else:
            values = getattr(tensor.contents, CONTENTS[spec.datatype])
            arrays[name] = from_values(list(values), spec, shape)
    check_complete(inputs, arrays, model)
    return arrays


@dataclass
class GrpcFront:
    """A bound gRPC server (not started until `start`) and its port."""

    server: Any
    port: int
    servicer: Servicer = field(repr=False)

    def start(self, state: Callable[[], State | None]) -> None:
        """Serve the State that `state()` returns at each call."""
        self.servicer.state = state
        self.server.start()

    def refuse_new(self) -> None:
        """Answer new calls UNAVAILABLE (not ready; grpcio's own stop would answer those that
        come during its grace CANCELLED, which clients do not retry elsewhere), while the calls
        in flight finish."""
        self.servicer.stopping = True

    def stop(self, grace: float) -> Any:
        """Stop: the calls in flight get `grace` seconds; a threading.Event that is set once
        they are done."""
        self.servicer.stopping = True
        return self.server.stop(grace)


def app_state(app: Any) -> Callable[[], State | None]:
    """What the app's lifespan loaded, read at each call (None before and after it)."""
    return lambda: getattr(app.state, "vae", None)


def bind(host: str, port: int, *, max_message_bytes: int, threads: int | None = None) -> GrpcFront:
    """A gRPC server on host:port (0: a free port), its calls run in a pool of `threads`
    (ThreadPoolExecutor's default: min(32, CPUs + 4)); a request message past
    `max_message_bytes` (the HTTP body cap) is RESOURCE_EXHAUSTED. One line if it cannot bind."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vae-grpc")
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),  # a port in use is an error, not a silently shared port
    ]
    server = grpc.server(pool, options=options)
    servicer = Servicer(lambda: None)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        pool.shutdown(wait=False)
        raise VaeError(
            f"cannot listen on {address} for gRPC; stop what uses it or choose another "
            "--grpc-port (0: any free port)"
        )
    return GrpcFront(server, bound, servicer)
