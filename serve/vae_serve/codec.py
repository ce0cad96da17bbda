"""The Open Inference Protocol (KServe "V2" REST) on the wire: inference requests in, responses
out, JSON tensors and the binary tensor data extension, and the protocol's error form.

Binary tensor data (Triton's extension, which tritonclient speaks): the body is a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw little-endian tensors of the inputs
whose `parameters` carry `binary_data_size`, in the order they are listed. Outputs come back the
same way when the request asks for them (`binary_data_output`, or `binary_data` per output).

Pure: bytes and numpy arrays in, bytes out, and a RequestError (an HTTP status and a one-line
message) for anything a client got wrong. No web framework is imported here: `endpoints.py`
carries these bytes over Starlette, and the gRPC front end could carry the same tensors.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from vae_runtime.errors import InvalidArgumentError, as_array

HEADER_LENGTH = "inference-header-content-length"  # the binary extension's HTTP header
BINARY_SIZE = "binary_data_size"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # Content-Encoding -> zlib
VERSION = "1"  # every model has this one version
# V2 datatypes this server reads and writes, as numpy little-endian types.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
}


class RequestError(InvalidArgumentError):
    """A request the protocol refuses: HTTP `status` (400 unless a subclass says otherwise)."""

    status = 400


class NotFoundError(RequestError):
    """An unknown model, version or path."""

    status = 404


class TooLargeError(RequestError):
    """A body past the size cap."""

    status = 413


class UnsupportedError(RequestError):
    """A body in a Content-Encoding this server does not read."""

    status = 415


class OverCapError(RequestError):
    """A batch past --max-batch (HTTP 400, as any bad value; gRPC's RESOURCE_EXHAUSTED)."""


class NotReadyError(RequestError):
    """The app's lifespan has not loaded the models (yet, or any more)."""

    status = 503


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, V2 datatype, shape with -1 for the batch axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "datatype": self.datatype}
        out["shape"] = list(self.shape)
        if self.optional:
            out["optional"] = True
        return out


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: the id to echo, checked input arrays by name, and which
    outputs to send (name -> binary or not)."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool]


def error_body(message: str) -> bytes:
    """The protocol's error form: {"error": "<one line>"}."""
    line = " ".join(str(message).split())
    try:
        return orjson.dumps({"error": line})
    except TypeError:  # a lone surrogate that came with a client's text: escaped
        return orjson.dumps({"error": line.encode("utf-8", "backslashreplace").decode()})


# What the client sends outside the JSON body, read one way: ASCII digits only (no sign, no
# "_", no other script's digits, which int() would take), at most 19 (an int64).
_COUNT = re.compile(r"[0-9]{1,19}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER = re.compile(  # float()'s own spellings of NaN and Infinity too: ranges refuse them
    r"[+-]?(([0-9]{1,40}\.?[0-9]{0,40}|\.[0-9]{1,40})(e[+-]?[0-9]{1,3})?|nan|inf|infinity)", re.I
)


def header_int(name: str, text: str) -> int:
    """An HTTP header that holds a byte count (Content-Length, Inference-Header-Content-Length):
    the one reading of every such header, a RequestError naming it otherwise."""
    value = text.strip(" \t")
    if _COUNT.fullmatch(value) is None:
        raise RequestError(f"{name} is {text!r:.40}, expected a byte count (decimal digits)")
    return int(value)


def query_number(name: str, text: str, kind: type[int] | type[float]) -> Any:
    """A query parameter as an integer or a decimal number (ASCII, no "_"): the one reading of
    every number in a URL, a RequestError naming the parameter otherwise."""
    pattern = _INTEGER if kind is int else _NUMBER
    if pattern.fullmatch(text) is None:
        what = "an integer" if kind is int else "a number"
        raise RequestError(f"{name} must be {what}, got {text!r:.40}")
    return kind(text)


_KINDS: dict[type, str] = {dict: "a JSON object", list: "a JSON array", str: "a string"}


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise RequestError(f"{where}: '{key}' is missing or not {_KINDS[kind]}")
    return value


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(f"{where}: 'parameters' must be a JSON object")
    return params


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"{where}: parameter '{key}' must be true or false, got {value!r}")
    return value


def _shape(raw: Any, spec: TensorSpec, max_batch: int, model: str) -> tuple[int, ...]:
    where = f"input '{spec.name}'"
    ok = isinstance(raw, list) and all(type(d) is int and d >= 0 for d in raw)
    if not ok:
        raise RequestError(f"{where}: 'shape' must be a list of non-negative integers")
    shape = tuple(raw)
    fits = len(shape) == len(spec.shape) and all(
        w in (-1, d) for w, d in zip(spec.shape, shape, strict=True)
    )
    if not fits:
        raise RequestError(
            f"{where} of model '{model}' has shape {list(shape)}, expected {list(spec.shape)} "
            "(-1: any batch size)"
        )
    if spec.shape and spec.shape[0] == -1 and not 1 <= shape[0] <= max_batch:
        raise (OverCapError if shape[0] > max_batch else RequestError)(
            f"{where}: a batch of {shape[0]:,}, this server takes 1..{max_batch:,} per request "
            "(--max-batch)"
        )
    return shape


def from_values(data: Any, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Values (JSON `data`, flat row-major or nested; gRPC's typed contents) as an array of
    the spec's type and `shape`."""
    where = f"input '{spec.name}'"
    array = as_array(f"{where} data", data)
    kind = array.dtype.kind
    if spec.datatype == "INT64":
        if kind not in "iu":
            raise RequestError(f"{where} ({spec.datatype}) must hold integers, got {data!r:.80}")
        if array.size and array.max() > np.iinfo(np.int64).max:
            raise RequestError(f"{where} holds integers beyond INT64's range")
    elif kind not in "fiu":
        raise RequestError(f"{where} ({spec.datatype}) must hold numbers")
    if array.size != math.prod(shape):
        raise RequestError(
            f"{where}: 'data' holds {array.size:,} values, shape {list(shape)} needs "
            f"{math.prod(shape):,}"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # past float32: inf, refused by the model
        return array.astype(DTYPES[spec.datatype]).reshape(shape)


def parse_infer(
    body: bytes,
    header_length: str | None,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    model: str,
    max_batch: int,
) -> InferRequest:
    """Check an inference request's body against a model's inputs and outputs. `header_length`
    is the Inference-Header-Content-Length header (None when the body is all JSON)."""
    if header_length is None:
        size = len(body)
    else:
        size = header_int("Inference-Header-Content-Length", header_length)
        if not 0 < size <= len(body):
            raise RequestError(
                f"Inference-Header-Content-Length is {header_length!r}, expected the JSON "
                f"header's size in bytes (1..{len(body):,}, the body's size)"
            )
    try:
        request = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the request is not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object with 'inputs'")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    binary = memoryview(body)[size:]
    specs = {spec.name: spec for spec in inputs}
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for raw in _field(request, "inputs", list, "the request"):
        if not isinstance(raw, dict):
            raise RequestError("each of 'inputs' must be a JSON object")
        name = _field(raw, "name", str, "an input")
        if name in arrays:
            raise RequestError(f"input '{name}' is given twice")
        datatype = _field(raw, "datatype", str, f"input '{name}'") if name in specs else ""
        spec, shape = check_input(
            specs, name, datatype, raw.get("shape"), model=model, max_batch=max_batch
        )
        params = _parameters(raw, f"input '{name}'")
        if BINARY_SIZE in params:
            nbytes = params[BINARY_SIZE]
            check_size(spec, shape, nbytes, BINARY_SIZE)
            if offset + nbytes > len(binary):
                raise RequestError(
                    f"input '{name}': the binary data is truncated ({nbytes:,} bytes declared, "
                    f"{len(binary) - offset:,} left in the body)"
                )
            chunk = binary[offset : offset + nbytes]
            arrays[name] = np.frombuffer(chunk, DTYPES[datatype]).reshape(shape)
            offset += nbytes
        elif "data" in raw:
            arrays[name] = from_values(raw["data"], spec, shape)
        else:
            raise RequestError(f"input '{name}' has neither 'data' nor a {BINARY_SIZE} parameter")
    if offset != len(binary):
        raise RequestError(
            f"{len(binary) - offset:,} bytes follow the JSON header that no input declares"
        )
    check_complete(inputs, arrays, model)
    return InferRequest(request_id, arrays, _outputs(request, outputs, model))


def check_input(
    specs: Mapping[str, TensorSpec],
    name: str,
    datatype: str,
    shape: Any,
    *,
    model: str,
    max_batch: int,
) -> tuple[TensorSpec, tuple[int, ...]]:
    """An input's name, datatype and shape (a list) against a model's inputs by name: its spec
    and shape, or a RequestError. The one check of an input over HTTP and over gRPC."""
    spec = specs.get(name)
    if spec is None:
        raise RequestError(f"model '{model}' has no input {name!r} (inputs: {', '.join(specs)})")
    if datatype != spec.datatype:
        raise RequestError(f"input '{name}' must be {spec.datatype}, got {datatype!r:.20}")
    return spec, _shape(shape, spec, max_batch, model)


def check_size(spec: TensorSpec, shape: tuple[int, ...], nbytes: Any, what: str) -> int:
    """`nbytes` of raw tensor data (`what` declares it) against what `shape` needs."""
    want = math.prod(shape) * DTYPES[spec.datatype].itemsize
    if type(nbytes) is not int or nbytes != want:
        raise RequestError(
            f"input '{spec.name}': {what} is {nbytes!r}, shape {list(shape)} of "
            f"{spec.datatype} needs {want:,} bytes"
        )
    return want


def check_complete(inputs: Sequence[TensorSpec], given: Mapping[str, Any], model: str) -> None:
    """Every input that is not optional was given."""
    missing = [s.name for s in inputs if s.name not in given and not s.optional]
    if missing:
        raise RequestError(f"model '{model}' needs input(s) {', '.join(missing)}")


def check_output(names: set[str], name: str, model: str) -> str:
    """An output asked for by name is one of the model's."""
    if name not in names:
        raise RequestError(
            f"model '{model}' has no output {name!r} (outputs: {', '.join(sorted(names))})"
        )
    return name


def _outputs(
    request: Mapping[str, Any], outputs: Sequence[TensorSpec], model: str
) -> dict[str, bool]:
    """Output name -> sent as binary, in the order asked for (all outputs when none are)."""
    default = _flag(_parameters(request, "the request"), "binary_data_output", "the request")
    asked = request.get("outputs")
    if asked is None:
        return {spec.name: default for spec in outputs}
    if not isinstance(asked, list):
        raise RequestError("'outputs' must be a JSON array")
    names = {spec.name for spec in outputs}
    chosen: dict[str, bool] = {}
    for raw in asked:
        if not isinstance(raw, dict):
            raise RequestError("each of 'outputs' must be a JSON object")
        name = check_output(names, _field(raw, "name", str, "an output"), model)
        params = _parameters(raw, f"output '{name}'")
        chosen[name] = _flag(params, "binary_data", f"output '{name}'") or (
            "binary_data" not in params and default
        )
    return chosen


def encode_response(
    model: str, request_id: str | None, outputs: Sequence[tuple[TensorSpec, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (for the
    Inference-Header-Content-Length header). Each item: (spec, array, as binary)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for spec, array, binary in outputs:
        array = np.ascontiguousarray(array, dtype=DTYPES[spec.datatype])
        entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype}
        entry["shape"] = list(array.shape)
        if binary:
            blobs.append(array.tobytes())
            entry["parameters"] = {BINARY_SIZE: array.nbytes}
        else:
            entry["data"] = array.reshape(-1)  # orjson writes float32 in its shortest exact form
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": VERSION}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = entries
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def inflate(body: bytes, encoding: str, cap: int) -> bytes:
    """A gzip or deflate (zlib) body, inflated to at most `cap` bytes: a small body that would
    inflate past the cap (a compression bomb) is refused without inflating the rest."""
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedError(f"Content-Encoding {encoding!r:.40}: send gzip, deflate or none")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, cap + 1)
    except zlib.error as exc:
        raise RequestError(f"the {encoding} body cannot be inflated ({exc})") from None
    if len(data) > cap:
        raise TooLargeError(f"the {encoding} body inflates past the cap of {cap:,} bytes")
    if not inflater.eof:
        raise RequestError(f"the {encoding} body is truncated")
    return data
