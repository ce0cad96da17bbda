"""The ONNX contract between exporter and runtime, written down once: names, shapes, metadata keys.

Both `vae_export` (which writes graphs) and `vae_runtime` (which loads them) import these words,
so a graph the runtime accepts is by construction one the exporter can produce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import ModelFileError

FORMAT_VERSION = 1  # of the graphs' metadata and of manifest.json
PRODUCER = "mnist-vae"

IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) of one image
IMAGE_PIXELS = 28 * 28
PIXEL_RANGE = (0.0, 1.0)  # float32 pixels, 0 = black background, 1 = white ink

BATCH_AXIS = "batch"  # the name of the dynamic first axis of every input and output
ENCODER_INPUT = "image"  # float32 (batch, 1, 28, 28)
ENCODER_OUTPUTS = ("mu", "logvar")  # float32 (batch, latent_dim) each
DECODER_INPUT = "z"  # float32 (batch, latent_dim)
DECODER_OUTPUT = "image"  # float32 (batch, 1, 28, 28) in [0, 1]

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mnist-vae/manifest"

# Keys of manifest.json that the runtime may read. A graph's checksum is at
# manifest[MANIFEST_FILES][<file name>][MANIFEST_SHA256] (hex SHA-256 of the file's bytes).
MANIFEST_KEY_FORMAT = "format"  # MANIFEST_FORMAT
MANIFEST_KEY_VERSION = "format_version"  # FORMAT_VERSION
MANIFEST_FILES = "files"  # {ENCODER_FILE: {sha256, bytes}, DECODER_FILE: {...}}
MANIFEST_SHA256 = "sha256"
MANIFEST_BYTES = "bytes"
MANIFEST_CHECKPOINT = "checkpoint"  # {"name": "model.pt", "sha256": ...}
MANIFEST_LATENT_DIM = "latent_dim"
MANIFEST_OPSET = "opset"

ROLES = ("encoder", "decoder")

# Keys of ONNX metadata_props; every value is a string (JSON where it is structured).
META_FORMAT = "vae.format_version"
META_ROLE = "vae.role"
META_LATENT_DIM = "vae.latent_dim"
META_IMAGE_SHAPE = "vae.image_shape"
META_PIXEL_RANGE = "vae.pixel_range"
META_PRODUCER = "vae.producer"
META_PRODUCER_VERSION = "vae.producer_version"
META_SOURCE = "vae.source"  # JSON: checkpoint file name and SHA-256
META_TRAINING = "vae.training"  # JSON: epochs, test loss, ...


@dataclass(frozen=True)
class GraphInfo:
    """What a graph's metadata says about it, parsed and checked."""

    role: str
    latent_dim: int
    format_version: int
    producer: str
    producer_version: str
    source: dict[str, Any]
    training: dict[str, Any]


def build_metadata(
    role: str,
    latent_dim: int,
    *,
    producer_version: str,
    source: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, str]:
    """The metadata_props an exported graph carries (all values strings)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return {
        META_FORMAT: str(FORMAT_VERSION),
        META_ROLE: role,
        META_LATENT_DIM: str(int(latent_dim)),
        META_IMAGE_SHAPE: json.dumps(list(IMAGE_SHAPE)),
        META_PIXEL_RANGE: json.dumps(list(PIXEL_RANGE)),
        META_PRODUCER: PRODUCER,
        META_PRODUCER_VERSION: producer_version,
        META_SOURCE: json.dumps(source, sort_keys=True),
        META_TRAINING: json.dumps(training, sort_keys=True),
    }


def parse_metadata(props: dict[str, str], path: str) -> GraphInfo:
    """Check a graph's metadata_props against the contract; `path` names the file in errors."""
    if META_ROLE not in props or META_FORMAT not in props:
        raise ModelFileError(
            f"{path}: not an mnist-vae graph (no '{META_ROLE}' metadata); "
            "export one with `vae-export model.pt`"
        )
    try:
        version = int(props[META_FORMAT])
        latent_dim = int(props[META_LATENT_DIM])
        image_shape = tuple(json.loads(props[META_IMAGE_SHAPE]))
        pixel_range = tuple(json.loads(props[META_PIXEL_RANGE]))
        source = json.loads(props.get(META_SOURCE, "{}"))
        training = json.loads(props.get(META_TRAINING, "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{path}: malformed mnist-vae metadata ({exc})") from None
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: graph format version {version} is newer than this runtime reads "
            f"({FORMAT_VERSION}); upgrade mnist-vae"
        )
    role = props[META_ROLE]
    if role not in ROLES:
        raise ModelFileError(f"{path}: unknown role {role!r}, expected one of {ROLES}")
    if latent_dim < 1:
        raise ModelFileError(f"{path}: latent size {latent_dim} in metadata is not positive")
    if image_shape != IMAGE_SHAPE or pixel_range != PIXEL_RANGE:
        raise ModelFileError(
            f"{path}: image shape {image_shape} / pixel range {pixel_range} in metadata, "
            f"expected {IMAGE_SHAPE} / {PIXEL_RANGE}"
        )
    return GraphInfo(
        role=role,
        latent_dim=latent_dim,
        format_version=version,
        producer=props.get(META_PRODUCER, ""),
        producer_version=props.get(META_PRODUCER_VERSION, ""),
        source=source if isinstance(source, dict) else {},
        training=training if isinstance(training, dict) else {},
    )
