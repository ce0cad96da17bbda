"""A Triton model repository of the exported graphs: `DIR/<name>/config.pbtxt` and
`DIR/<name>/1/model.onnx` for each graph, as NVIDIA Triton (alone or under KServe) loads it.

Names are vae-serve's: the fp32 pair is `decoder` and `encoder`, other precisions
`decoder_int8`, `encoder_fp16`, ...; inputs and outputs are the contract's (`z` -> `image`,
`image` -> `mu`, `logvar`), so a V2 client moves between vae-serve and Triton by its URL alone.
Each config.pbtxt names the ONNX Runtime backend, the batch axis as `max_batch_size` (dims after
it), dynamic batching, a CPU instance group (README: the GPU variant), and the graph's metadata
and SHA-256 as `parameters`. The files are written by the export, in the same `Outputs` set as
the graphs and the manifest: all of them change together or none does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx

from vae_runtime import contract as C
from vae_runtime.fileio import Outputs

PLATFORM = "onnxruntime_onnx"
VERSION = "1"  # the one version folder each model has
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the ONNX Runtime backend's default file name
# Rows per request and per dynamically formed batch: vae-serve's default --max-batch.
MAX_BATCH_SIZE = 1024
QUEUE_DELAY_US = 100  # how long the dynamic batcher may hold a request to fill a batch
CPU_INSTANCES = 2  # model instances (onnxruntime sessions) per model on CPU


def model_name(role: str, precision: str) -> str:
    """The served name of a graph: vae-serve's (`decoder`, `decoder_int8`, ...)."""
    C.graph_file(role, precision)  # ValueError for an unknown role or precision
    return role if precision == "fp32" else f"{role}_{precision}"


def repository_files(repo: Path, graphs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Path]:
    """For each (role, precision): its config.pbtxt's path; model.onnx is `model_file(config)`."""
    return {
        (role, precision): Path(repo) / model_name(role, precision) / CONFIG_FILE
        for role, precision in graphs
    }


def model_file(config: Path) -> Path:
    """DIR/<name>/1/model.onnx beside DIR/<name>/config.pbtxt."""
    return config.parent / VERSION / MODEL_FILE


def targets(repo: Path, graphs: Iterable[tuple[str, str]]) -> list[Path]:
    """Every file the repository of `graphs` ((role, precision) pairs) consists of."""
    configs = repository_files(repo, graphs).values()
    return [path for config in configs for path in (model_file(config), config)]


def stage(
    outputs: Outputs, repo: Path, graphs: Mapping[tuple[str, str], bytes], latent_dim: int
) -> None:
    """Stage the repository of `graphs` ((role, precision) -> the .onnx bytes the export
    writes) into `outputs`, whose targets include `targets(repo, graphs)`."""
    for (role, precision), config in repository_files(repo, graphs).items():
        blob = graphs[(role, precision)]
        metadata = {p.key: p.value for p in onnx.load_model_from_string(blob).metadata_props}
        outputs.write_bytes(model_file(config), blob)
        text = config_text(role, precision, latent_dim, blob, metadata)
        outputs.write_bytes(config, text.encode("utf-8"))


def _tensor(name: str, dims: Iterable[int]) -> str:
    dims_text = ", ".join(str(d) for d in dims)
    return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {dims_text} ]\n  }}'


def _quote(text: str) -> str:
    """`text` as a protobuf text-format string literal (UTF-8 kept as it is)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def config_text(
    role: str, precision: str, latent_dim: int, graph: bytes, metadata: Mapping[str, str]
) -> str:
    """The config.pbtxt of one graph: `graph` is model.onnx's bytes (its SHA-256 becomes a
    parameter), `metadata` the graph's metadata_props (each a parameter, as its own key)."""
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[tuple[str, tuple[int, ...]]]
    if role == "decoder":
        inputs = [(C.DECODER_INPUT, (latent_dim,))]
        outputs = [(C.DECODER_OUTPUT, C.IMAGE_SHAPE)]
    else:
        inputs = [(C.ENCODER_INPUT, C.IMAGE_SHAPE)]
        outputs = [(name, (latent_dim,)) for name in C.ENCODER_OUTPUTS]
    parameters = {**metadata, "sha256": hashlib.sha256(graph).hexdigest()}
    lines = [
        f"# {model_name(role, precision)}: the mnist-vae {role} ({precision}), written by "
        "vae-export --triton-repo.",
        "# For a GPU, replace instance_group's block with: [ { count: 1, kind: KIND_GPU } ]",
        f'name: "{model_name(role, precision)}"',
        f'platform: "{PLATFORM}"',
        f"max_batch_size: {MAX_BATCH_SIZE}  # dims below are after the batch axis",
        "input [",
        ",\n".join(_tensor(n, d) for n, d in inputs),
        "]",
        "output [",
        ",\n".join(_tensor(n, d) for n, d in outputs),
        "]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
        f"instance_group [\n  {{\n    count: {CPU_INSTANCES}\n    kind: KIND_CPU\n  }}\n]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    for key in sorted(parameters):
        value = _quote(parameters[key])
        lines.append(
            f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: {value} }}\n}}"
        )
    return "\n".join(lines) + "\n"
