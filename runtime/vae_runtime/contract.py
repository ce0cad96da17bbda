"""The ONNX contract between exporter and runtime, written down once: names, shapes, metadata keys.

Both `vae_export` (which writes graphs) and `vae_runtime` (which loads them) import these words,
so a graph the runtime accepts is by construction one the exporter can produce.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError, ModelFileError, check_path, is_int

# manifest.json's score reference, re-exported: the contract names everything the manifest holds
from .reference import SCORE_REFERENCE as SCORE_REFERENCE
from .reference import ScoreReference as ScoreReference

FORMAT_VERSION = 1  # of the graphs' metadata and of manifest.json
PRODUCER = "mnist-vae"

IMAGE_SHAPE = (1, 28, 28)  # (C, H, W) of one image
IMAGE_PIXELS = 28 * 28
PIXEL_RANGE = (0.0, 1.0)  # float32 pixels, 0 = black background, 1 = white ink

BATCH_AXIS = "batch"  # the name of the dynamic first axis of every input and output
LATENT = "latent_dim"  # stands for the model's latent size in a declared shape


@dataclass(frozen=True)
class TensorDecl:
    """One input or output of a role's graph: float32, the batch axis first, then `dims`
    (LATENT where the model's latent size goes). An `optional` output may be absent from a
    graph (one exported before it was declared); the required ones come first, in order."""

    name: str
    dims: tuple[int | str, ...]
    optional: bool = False

    def shape(self, latent_dim: int) -> tuple[int, ...]:
        """The dims after the batch axis, for a model of `latent_dim`."""
        return tuple(latent_dim if d == LATENT else int(d) for d in self.dims)


@dataclass(frozen=True)
class Interface:
    """What a role's graph takes and gives, declared once: the exporter names its graph's
    inputs and outputs from it, the runtime checks loaded graphs against it, and the service,
    the Triton configuration and the page describe their tensors with it."""

    role: str
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    dtype: str = "float32"


ENCODER = Interface(  # (B, 1, 28, 28) in [0, 1] -> mu, logvar (B, latent_dim)
    "encoder",
    (TensorDecl("image", IMAGE_SHAPE),),
    (TensorDecl("mu", (LATENT,)), TensorDecl("logvar", (LATENT,))),
)
# z (B, latent_dim) -> image (B, 1, 28, 28) in [0, 1], and logits (B, 1, 28, 28): the
# pre-sigmoid values, image = sigmoid(logits). Scoring needs them (log(1 - p) is lost where the
# float32 sigmoid saturates at 1.0); graphs exported before them have only `image`.
DECODER = Interface(
    "decoder",
    (TensorDecl("z", (LATENT,)),),
    (TensorDecl("image", IMAGE_SHAPE), TensorDecl("logits", IMAGE_SHAPE, optional=True)),
)
INTERFACES = {i.role: i for i in (ENCODER, DECODER)}
# Short names of the declarations above, for code that handles one role.
ENCODER_INPUT = ENCODER.inputs[0].name
ENCODER_OUTPUTS = tuple(t.name for t in ENCODER.outputs)
DECODER_INPUT = DECODER.inputs[0].name
DECODER_OUTPUT = DECODER.outputs[0].name
DECODER_LOGITS = DECODER.outputs[1].name

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
# SCORE_REFERENCE ("score_reference"): the test set's score distribution (reference.py), absent
# in manifests written before it

ROLES = tuple(INTERFACES)  # ("encoder", "decoder")
# Of a graph's weights and arithmetic; float32 at the inputs and outputs always. fp32 is the
# export's default; int8 and fp16 graphs are written beside it on request (graph_file names them).
PRECISIONS = ("fp32", "int8", "fp16")
MAX_LATENT_DIM = 4096  # far above any MNIST VAE; a file claiming more is corrupt or hostile
_MAX_MANIFEST_BYTES = 1 << 24  # 16 MiB: a real manifest is a few KB
_SHA256 = re.compile(r"[0-9a-f]{64}")

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
META_PRECISION = "vae.precision"  # one of PRECISIONS; absent in graphs before it existed: fp32


def graph_file(role: str, precision: str = "fp32") -> str:
    """The file name of a `role` graph of `precision`: decoder.onnx, decoder.int8.onnx, ..."""
    if role not in ROLES or precision not in PRECISIONS:
        raise ValueError(f"no graph file for role {role!r} and precision {precision!r}")
    return f"{role}.onnx" if precision == "fp32" else f"{role}.{precision}.onnx"


def served_name(role: str, precision: str, default: str = "fp32") -> str:
    """The name a service gives the `role` graph of `precision` when `default` is the precision
    served under the plain role names: decoder, encoder, decoder_int8, encoder_fp16, ..."""
    graph_file(role, precision)  # checks both names
    return role if precision == default else f"{role}_{precision}"


def listed_graphs(files: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The graphs among a manifest's `files`, as (role, precision, file name), decoders first,
    in PRECISIONS order: the order in which every deploy target lists them."""
    return [
        (role, precision, graph_file(role, precision))
        for role in ("decoder", "encoder")
        for precision in PRECISIONS
        if graph_file(role, precision) in files
    ]


def check_format_version(
    version: Any,
    where: str,
    *,
    kind: str = "format",
    newest: int = FORMAT_VERSION,
    fix: str = "re-export the graphs with vae-export",
    error: type[ModelFileError] = ModelFileError,
) -> int:
    """The one format-version rule of every versioned file (graph metadata, manifest.json,
    model.pt): an integer from 1 to `newest`. Else `error`, naming `where` and the `kind` of
    file; a version newer than this mnist-vae reads asks for an upgrade, a malformed one for
    `fix`."""
    if not is_int(version) or version < 1:
        raise error(f"{where}: bad {kind} version {version!r:.40}; {fix}")
    if version > newest:
        raise error(
            f"{where}: {kind} format version {version} is newer than this mnist-vae reads "
            f"({newest}); upgrade mnist-vae"
        )
    return version


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
    precision: str = "fp32"


def build_metadata(
    role: str,
    latent_dim: int,
    *,
    producer_version: str,
    source: dict[str, Any],
    training: dict[str, Any],
    precision: str = "fp32",
) -> dict[str, str]:
    """The metadata_props an exported graph carries (all values strings)."""
    if role not in ROLES or precision not in PRECISIONS:
        raise ValueError(f"role {role!r} / precision {precision!r}: not {ROLES} / {PRECISIONS}")
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
        META_PRECISION: precision,
    }


def parse_metadata(props: dict[str, str], path: str) -> GraphInfo:
    """Check a graph's metadata_props against the contract; `path` names the file in errors."""
    if not isinstance(props, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in props.items()
    ):
        raise InvalidArgumentError("graph metadata must be a mapping of strings to strings")
    if META_ROLE not in props or META_FORMAT not in props:
        raise ModelFileError(
            f"{path}: not an mnist-vae graph (no '{META_ROLE}' metadata); "
            "export one with `vae-export model.pt`"
        )
    try:
        version = int(props[META_FORMAT])  # a string in the metadata, like every value there
        latent_dim = int(props[META_LATENT_DIM])
        image_shape = tuple(json.loads(props[META_IMAGE_SHAPE]))
        pixel_range = tuple(json.loads(props[META_PIXEL_RANGE]))
        source = json.loads(props.get(META_SOURCE, "{}"))
        training = json.loads(props.get(META_TRAINING, "{}"))
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise ModelFileError(f"{path}: malformed mnist-vae metadata ({detail})") from None
    check_format_version(version, path, kind="graph")
    role = props[META_ROLE]
    if role not in ROLES:
        raise ModelFileError(f"{path}: unknown role {role!r}, expected one of {ROLES}")
    if not 1 <= latent_dim <= MAX_LATENT_DIM:
        raise ModelFileError(
            f"{path}: latent size {latent_dim} in metadata is outside 1..{MAX_LATENT_DIM}"
        )
    precision = props.get(META_PRECISION, "fp32")
    if precision not in PRECISIONS:
        raise ModelFileError(
            f"{path}: unknown precision {precision!r}, expected one of {PRECISIONS}"
        )
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
        precision=precision,
    )


@dataclass(frozen=True)
class FileEntry:
    """What manifest.json says about one graph file."""

    sha256: str  # hex SHA-256 of the file's bytes
    size: int  # bytes
    role: str = ""  # "encoder" / "decoder" ("" in manifests written before roles were listed)
    precision: str = "fp32"
    # int8 / fp16 graphs: what the export's quality gate measured against fp32 (figures by name)
    quality: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, data: bytes, role: str, precision: str = "fp32", quality: dict[str, Any] | None = None
    ) -> FileEntry:
        """The entry of a graph file with these bytes."""
        return cls(hashlib.sha256(data).hexdigest(), len(data), role, precision, quality or {})

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {MANIFEST_SHA256: self.sha256, MANIFEST_BYTES: self.size}
        if self.role:
            entry["role"] = self.role
        entry["precision"] = self.precision
        if self.quality:
            entry["quality"] = self.quality
        return entry


@dataclass(frozen=True)
class Manifest:
    """manifest.json: the one type that reads, checks and writes it (exporter and runtime alike).

    `files` maps each graph's file name to its entry; `latent_dim` is the pair's latent size;
    `checkpoint` names the source model.pt and its SHA-256; `details` holds everything else the
    exporter records (model config, training figures, versions, export settings, verification),
    kept as it was read. `path` is where it was loaded from (None for one being built)."""

    files: dict[str, FileEntry]
    latent_dim: int
    checkpoint: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def to_bytes(self) -> bytes:
        """The JSON text, as written beside the graphs."""
        content: dict[str, Any] = {
            MANIFEST_KEY_FORMAT: MANIFEST_FORMAT,
            MANIFEST_KEY_VERSION: FORMAT_VERSION,
            MANIFEST_FILES: {name: e.to_json() for name, e in self.files.items()},
            MANIFEST_CHECKPOINT: self.checkpoint,
            MANIFEST_LATENT_DIM: self.latent_dim,
            **self.details,
        }
        return (json.dumps(content, indent=2, allow_nan=False) + "\n").encode("utf-8")

    @classmethod
    def beside(cls, graph: Path) -> Manifest | None:
        """The manifest.json in the graph's folder, checked, or None when there is none."""
        path = Path(graph).parent / MANIFEST_FILE
        return cls.load(path) if path.is_file() else None

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        """Read and check manifest.json; ModelFileError names the file and the bad field."""
        path = check_path("manifest path", path)
        try:
            if path.stat().st_size > _MAX_MANIFEST_BYTES:
                raise ModelFileError(f"{path}: {path.stat().st_size:,} bytes is not a manifest")
            content = json.loads(path.read_bytes(), parse_constant=_no_constant)
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot read the manifest: {exc.strerror}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            detail = " ".join(str(exc).split())[:120]
            raise ModelFileError(f"{path}: not valid JSON ({detail}); re-export") from None
        return cls._parse(content, path)

    @classmethod
    def _parse(cls, content: Any, path: Path) -> Manifest:
        def bad(what: str) -> ModelFileError:
            return ModelFileError(f"{path}: {what}; re-export the graphs with vae-export")

        if not isinstance(content, dict) or content.get(MANIFEST_KEY_FORMAT) != MANIFEST_FORMAT:
            raise bad(f"not an mnist-vae manifest (no '{MANIFEST_FORMAT}' format tag)")
        check_format_version(content.get(MANIFEST_KEY_VERSION), str(path), kind="manifest")
        latent = content.get(MANIFEST_LATENT_DIM)
        if not is_int(latent) or not 1 <= latent <= MAX_LATENT_DIM:
            raise bad(f"'{MANIFEST_LATENT_DIM}' is {latent!r}, expected 1..{MAX_LATENT_DIM}")
        files = content.get(MANIFEST_FILES)
        if not isinstance(files, dict) or not files:
            raise bad(f"'{MANIFEST_FILES}' lists no graph files")
        entries = {}
        for name, raw in files.items():
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                raise bad(f"'{MANIFEST_FILES}' names {name!r}, which is not a file name")
            if not isinstance(raw, dict):
                raise bad(f"the entry of {name} is not an object")
            sha, size = raw.get(MANIFEST_SHA256), raw.get(MANIFEST_BYTES)
            role, precision = raw.get("role", ""), raw.get("precision", "fp32")
            quality = raw.get("quality", {})
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise bad(f"the SHA-256 of {name} is {sha!r}, expected 64 hex digits")
            if not is_int(size) or size < 0:
                raise bad(f"the size of {name} is {size!r}, expected a byte count")
            if role not in ("", *ROLES) or precision not in PRECISIONS:
                raise bad(f"{name} has role {role!r} / precision {precision!r}")
            if not isinstance(quality, dict):
                raise bad(f"the quality figures of {name} are not an object")
            entries[name] = FileEntry(sha, size, role, precision, quality)
        checkpoint = content.get(MANIFEST_CHECKPOINT, {})
        if not isinstance(checkpoint, dict):
            raise bad(f"'{MANIFEST_CHECKPOINT}' is not an object")
        known = {MANIFEST_KEY_FORMAT, MANIFEST_KEY_VERSION, MANIFEST_FILES, MANIFEST_CHECKPOINT}
        details = {k: v for k, v in content.items() if k not in known | {MANIFEST_LATENT_DIM}}
        if SCORE_REFERENCE in details:
            try:
                ScoreReference.from_json(details[SCORE_REFERENCE])
            except InvalidArgumentError as exc:
                raise bad(
                    f"'{SCORE_REFERENCE}': {str(exc).removeprefix('score reference: ')}"
                ) from None
        return cls(entries, latent, checkpoint, details, path)

    @property
    def score_reference(self) -> ScoreReference | None:
        """The score distribution of the reference images (checked on load), or None in a
        manifest written before it existed."""
        data = self.details.get(SCORE_REFERENCE)
        return None if data is None else ScoreReference.from_json(data)

    def verify(self, graph: Path, data: bytes) -> FileEntry:
        """Check the bytes of `graph` (a file beside this manifest) against its entry: a file
        the manifest does not list, or whose SHA-256 differs, is a ModelFileError."""
        entry = self.files.get(graph.name)
        fix = "re-export, or move the graph away from that manifest"
        if entry is None:
            raise ModelFileError(
                f"{graph}: not listed in {self.path} (it lists {', '.join(sorted(self.files))}); "
                f"the file does not belong to that export ({fix})"
            )
        found = hashlib.sha256(data).hexdigest()
        if found != entry.sha256:
            raise ModelFileError(
                f"{graph}: SHA-256 {found[:16]}... does not match {entry.sha256[:16]}... listed "
                f"in {self.path}; the file was modified or comes from another export ({fix})"
            )
        return entry


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
