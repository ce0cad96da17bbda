"""Triton's model configuration of a graph, as the plain dict (ModelConfig's JSON form) that both
`vae-export --triton-repo` (rendered as config.pbtxt) and `vae-serve` (`GET
/v2/models/{name}/config`) use: built here once, from the contract's declarations, so the two
cannot differ.

`graph_config` describes an exported graph as Triton's ONNX Runtime backend runs it: the role's
declared inputs and outputs (dims after the batch axis, which `max_batch_size` stands for),
dynamic batching, a CPU instance group, and the graph's metadata and SHA-256 as `parameters`.
`config` is the general form, for models that are code around the graphs (vae-serve's sampler
and scorer)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import contract as C

PLATFORM = "onnxruntime_onnx"
# Rows per request and per dynamically formed batch: vae-serve's default --max-batch.
MAX_BATCH_SIZE = 1024
QUEUE_DELAY_US = 100  # how long Triton's dynamic batcher may hold a request to fill a batch
CPU_INSTANCES = 2  # model instances (onnxruntime sessions) per model on Triton's CPU
# Triton's name of each datatype, by numpy's name and by the protocol's (FP32, INT64, ...).
DATA_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64"}
PROTOCOL_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64"}


def tensor(
    name: str, data_type: str, dims: Sequence[int], optional: bool = False
) -> dict[str, Any]:
    """One ModelInput/ModelOutput (`optional` is an input's field only: given when true)."""
    entry: dict[str, Any] = {"name": name, "data_type": data_type, "dims": [int(d) for d in dims]}
    if optional:
        entry["optional"] = True
    return entry


def parameters(values: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """ModelConfig's `parameters` map (string values only), keys sorted."""
    return {key: {"string_value": str(values[key])} for key in sorted(values)}


def config(
    name: str,
    inputs: Iterable[dict[str, Any]],
    outputs: Iterable[dict[str, Any]],
    *,
    max_batch_size: int,
    platform: str = "",
    backend: str = "",
    params: Mapping[str, str] | None = None,
    batching: bool = False,
    instances: int = 1,
) -> dict[str, Any]:
    """A ModelConfig as a plain dict, fields in config.pbtxt's order; `platform`/`backend`
    only when given, `dynamic_batching` when `batching`."""
    out: dict[str, Any] = {"name": name}
    if platform:
        out["platform"] = platform
    if backend:
        out["backend"] = backend
    out["max_batch_size"] = int(max_batch_size)
    out["input"], out["output"] = list(inputs), list(outputs)
    if batching:
        out["dynamic_batching"] = {"max_queue_delay_microseconds": QUEUE_DELAY_US}
    out["instance_group"] = [{"count": instances, "kind": "KIND_CPU"}]
    out["version_policy"] = {"latest": {"num_versions": 1}}
    out["parameters"] = parameters(params or {})
    return out


def graph_config(
    role: str,
    precision: str,
    latent_dim: int,
    sha256: str,
    metadata: Mapping[str, str],
    *,
    output_names: Iterable[str] | None = None,
    max_batch_size: int = MAX_BATCH_SIZE,
) -> dict[str, Any]:
    """The configuration of one exported graph: inputs and outputs are the role's declared
    interface (an optional output only if `output_names`, the graph's own, has it; None: all
    declared); `sha256` is the graph file's, `metadata` its metadata_props (each a parameter,
    as its own key). ValueError for an unknown role or precision."""
    name = C.served_name(role, precision)
    interface = C.INTERFACES[role]
    data_type = DATA_TYPES[interface.dtype]
    present = None if output_names is None else set(output_names)
    declared = [
        t for t in interface.outputs if not t.optional or present is None or t.name in present
    ]
    return config(
        name,
        (tensor(t.name, data_type, t.shape(latent_dim)) for t in interface.inputs),
        (tensor(t.name, data_type, t.shape(latent_dim)) for t in declared),
        max_batch_size=max_batch_size,
        platform=PLATFORM,
        params={**metadata, "sha256": sha256},
        batching=True,
        instances=CPU_INSTANCES,
    )
