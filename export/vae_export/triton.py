"""A Triton model repository of the exported graphs: `DIR/<name>/config.pbtxt` and
`DIR/<name>/1/model.onnx` for each graph, as NVIDIA Triton (alone or under KServe) loads it.

Names are vae-serve's (`contract.served_name`): the fp32 pair is `decoder` and `encoder`, other
precisions `decoder_int8`, `encoder_fp16`, ...; inputs and outputs are the role's declared
`contract.Interface`, so a V2 client moves between vae-serve and Triton by its URL alone.
Each configuration names the ONNX Runtime backend, the batch axis as `max_batch_size` (dims after
it), dynamic batching, a CPU instance group (docs/deploy/triton.md: the GPU variant), and the
graph's metadata and SHA-256 as `parameters`. The runtime's `triton_config` builds it once, as
the plain dict that `GET /v2/models/{name}/config` answers with (Triton's and vae-serve's);
config.pbtxt is that dict rendered in protobuf text format (`config_text`), so the two cannot
differ. The files are written by the export, in the same `Outputs` set as the graphs and the
manifest: all of them change together or none does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import onnx

import vae_runtime.triton_config as triton_config
from vae_runtime import contract as C
from vae_runtime.fileio import Outputs

PLATFORM = triton_config.PLATFORM
VERSION = "1"  # the one version folder each model has
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the ONNX Runtime backend's default file name
MAX_BATCH_SIZE = triton_config.MAX_BATCH_SIZE
DATA_TYPES = triton_config.DATA_TYPES  # Triton's name of each declared dtype
# ModelConfig fields whose values are enums (bare words in text format, strings in JSON), and
# those that are maps (`key`/`value` entries in text format, objects in JSON).
_ENUM_FIELDS = frozenset({"data_type", "kind"})
_MAP_FIELDS = frozenset({"parameters"})


def repository_files(repo: Path, graphs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Path]:
    """For each (role, precision): its config.pbtxt's path; model.onnx is `model_file(config)`."""
    return {
        (role, precision): Path(repo) / C.served_name(role, precision) / CONFIG_FILE
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


def model_config(
    role: str, precision: str, latent_dim: int, graph: bytes, metadata: Mapping[str, str]
) -> dict[str, Any]:
    """The Triton model configuration of one graph, as a plain dict (ModelConfig's JSON form):
    the runtime's `triton_config.graph_config`, the same that vae-serve answers `GET
    /v2/models/{name}/config` with. `graph` is model.onnx's bytes (its SHA-256 becomes a
    parameter), `metadata` the graph's metadata_props (each a parameter, as its own key)."""
    sha256 = hashlib.sha256(graph).hexdigest()
    return triton_config.graph_config(role, precision, latent_dim, sha256, metadata)


def config_text(
    role: str, precision: str, latent_dim: int, graph: bytes, metadata: Mapping[str, str]
) -> str:
    """config.pbtxt of one graph: `model_config(...)` rendered in protobuf text format."""
    config = model_config(role, precision, latent_dim, graph, metadata)
    lines = [
        f"# {config['name']}: the mnist-vae {role} ({precision}), written by "
        "vae-export --triton-repo; dims are after the batch axis (max_batch_size).",
        "# For a GPU, replace instance_group's block with: [ { count: 1, kind: KIND_GPU } ]",
        *_fields(config, ""),
    ]
    return "\n".join(lines) + "\n"


def _fields(message: Mapping[str, Any], indent: str) -> list[str]:
    """The lines of a message's fields in protobuf text format, from its JSON-form dict."""
    lines = []
    for key, value in message.items():
        if key in _MAP_FIELDS:  # one `key`/`value` entry per item
            for k, v in value.items():
                entry = {"key": k, "value": v}
                lines += [f"{indent}{key} {{", *_fields(entry, indent + "  "), f"{indent}}}"]
        elif isinstance(value, Mapping):
            lines += [f"{indent}{key} {{", *_fields(value, indent + "  "), f"{indent}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], Mapping):
            blocks = [
                "\n".join([f"{indent}  {{", *_fields(item, indent + "    "), f"{indent}  }}"])
                for item in value
            ]
            lines += [f"{indent}{key} [", ",\n".join(blocks), f"{indent}]"]
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: [ {', '.join(_scalar(key, v) for v in value)} ]")
        else:
            lines.append(f"{indent}{key}: {_scalar(key, value)}")
    return lines


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if key in _ENUM_FIELDS:
        return str(value)
    return _quote(str(value))


def _quote(text: str) -> str:
    """`text` as a protobuf text-format string literal (UTF-8 kept as it is)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'
