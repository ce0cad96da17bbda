"""model.pt -> encoder.onnx + decoder.onnx + manifest.json: export, slim, stamp, verify, keep."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

import vae_runtime
from vae_runtime import contract as C
from vae_runtime.errors import DataError, InvalidArgumentError, OutputError, VaeError
from vae_runtime.fileio import atomic_output, check_output_dir, sha256_file
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.sampling import sample_latents
from vae_train.checkpoint import Checkpoint, load_checkpoint
from vae_train.data import DATA_DIR_ENV, TEST_IMAGES, TRAIN_IMAGES, find_images
from vae_train.model import VAE

from . import DEFAULT_OPSET, MIN_OPSET
from .verify import BATCH_SIZES, Reference, Report, VerificationError, verify_graphs

TRACE_BATCH = 2  # >= 2 at trace time, so no size-1 axis can be specialised into the graph
PRODUCER_VERSION = vae_runtime.__version__  # written into graphs and manifest
_PREFIX = "vae."  # the wrappers hold the model as `vae`; stripped so weights keep seed names


class ExportError(VaeError):
    """torch.onnx.export failed, or produced a graph that breaks the contract."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the three paths, the manifest's content and the parity report."""

    encoder: Path
    decoder: Path
    manifest: Path
    content: dict[str, Any]
    report: Report


class _Encoder(nn.Module):
    """The encoder graph: image (B, 1, 28, 28) -> mu, logvar (B, latent_dim)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(torch.flatten(image, 1))  # (B, 784)


class _Decoder(nn.Module):
    """The decoder graph: z (B, latent_dim) -> image (B, 1, 28, 28), sigmoid pixel means."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).reshape(-1, *C.IMAGE_SHAPE)


def export_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    data_dir: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `checkpoint` (a model.pt) to encoder.onnx, decoder.onnx and manifest.json in
    `out_dir` (default: the checkpoint's folder), verified against the torch model first.

    Real images for the encoder's check come from `data_dir` (else $VAE_DATA_DIR) when set,
    else from the model's own decoded samples. Nothing in `out_dir` changes unless every check
    passes; existing files are replaced only with `force`. Raises a VaeError subclass:
    CheckpointError, OutputError, DataError, InvalidArgumentError, ExportError or
    VerificationError.
    """
    say = log or (lambda _line: None)
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise InvalidArgumentError(f"opset must be in {MIN_OPSET}..{max_opset}, got {opset}")
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    model = ckpt.build_model(path)
    out = Path(out_dir) if out_dir is not None else path.parent
    targets = _check_targets(out, force)
    images, images_name = _reference_images(data_dir, model)

    started = time.perf_counter()
    source = {"checkpoint": path.name, "sha256": sha256_file(path)}
    training = _training_summary(ckpt)
    blobs = {
        name: _graph_bytes(role, model, opset, source, training)
        for name, role in ((C.ENCODER_FILE, "encoder"), (C.DECODER_FILE, "decoder"))
    }
    export_seconds = time.perf_counter() - started
    say(f"exported {path} in {export_seconds:.1f} s (opset {opset}); verifying against torch")

    with contextlib.ExitStack() as stack:
        # The manifest is entered first so that it is renamed into place last.
        tmp = {name: stack.enter_context(atomic_output(p)) for name, p in targets.items()}
        for name, blob in blobs.items():
            tmp[name].write_bytes(blob)
        encode, decode = _torch_references(model)
        graphs = tmp[C.ENCODER_FILE], tmp[C.DECODER_FILE]
        report = verify_graphs(
            *graphs, encode, decode, images, images_name, model.config.latent_dim
        )
        say(report.table())
        if not report.passed:
            raise VerificationError(report.failure_message() + f"; nothing written to {out}")
        content = _manifest(ckpt, source, training, blobs, opset, export_seconds, report)
        tmp[C.MANIFEST_FILE].write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {', '.join(str(out / name) for name in (*blobs, C.MANIFEST_FILE))}")
    return ExportResult(
        encoder=targets[C.ENCODER_FILE],
        decoder=targets[C.DECODER_FILE],
        manifest=targets[C.MANIFEST_FILE],
        content=content,
        report=report,
    )


def _check_targets(out: Path, force: bool) -> dict[str, Path]:
    """The three output paths, after checking (before any work) that they may be written."""
    check_output_dir(out)
    targets = {name: out / name for name in (C.MANIFEST_FILE, C.ENCODER_FILE, C.DECODER_FILE)}
    for p in targets.values():
        if p.is_dir():
            raise OutputError(f"output path {p} is a folder, expected a file name")
    existing = [name for name, p in targets.items() if p.exists()]
    if existing and not force:
        raise OutputError(
            f"{', '.join(existing)} already in {out}; nothing was overwritten "
            "(pass --force to replace them, or choose another --out-dir)"
        )
    return targets


def _reference_images(data_dir: Path | str | None, model: VAE) -> tuple[np.ndarray, str]:
    """Real-looking images for the encoder's check: float32 (N, 1, 28, 28) and their name."""
    n = max(BATCH_SIZES)
    named = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if named is not None:
        folder = Path(named)
        found = None
        if folder.is_dir():
            found = find_images(folder, TEST_IMAGES) or find_images(folder, TRAIN_IMAGES)
        if found is None:
            raise DataError(
                f"data folder {folder}: no {TEST_IMAGES}[.gz] or {TRAIN_IMAGES}[.gz] in it; "
                f"point --data-dir (or ${DATA_DIR_ENV}) at MNIST's IDX files, or unset it"
            )
        raw = read_idx(found, IMAGES_MAGIC)
        if raw.ndim != 3 or raw.shape[1:] != C.IMAGE_SHAPE[1:] or raw.shape[0] == 0:
            raise DataError(f"{found}: images of shape {list(raw.shape)}, expected [N, 28, 28]")
        images = raw[:n].astype(np.float32) / 255.0
        return images.reshape(-1, *C.IMAGE_SHAPE), f"{found.name.split('-')[0]} images"
    # No data: the model's own decoded samples look like what it was trained on.
    z = torch.from_numpy(sample_latents(n, model.config.latent_dim, seed=0))
    with torch.no_grad():
        images = model.decode(z).numpy()
    return images.reshape(-1, *C.IMAGE_SHAPE), "decoded samples"


def _torch_references(model: VAE) -> tuple[Reference, Reference]:
    """The torch model itself (not the export wrappers, whose mistakes the check must catch)
    as numpy -> named numpy outputs functions, for the encoder and the decoder."""

    def encode(batch: np.ndarray) -> dict[str, np.ndarray]:  # (B, 1, 28, 28) -> 2x (B, d)
        with torch.no_grad():
            outputs = model.encode(torch.from_numpy(batch).flatten(1))
        return {name: t.numpy() for name, t in zip(C.ENCODER_OUTPUTS, outputs, strict=True)}

    def decode(batch: np.ndarray) -> dict[str, np.ndarray]:  # (B, d) -> (B, 1, 28, 28)
        with torch.no_grad():
            image = model.decode(torch.from_numpy(batch)).reshape(-1, *C.IMAGE_SHAPE)
        return {C.DECODER_OUTPUT: image.numpy()}

    return encode, decode


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision, deprecations): not the user's
    concern, and it would bury the verification table."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _graph_bytes(
    role: str, model: VAE, opset: int, source: dict[str, str], training: dict[str, Any]
) -> bytes:
    """One graph exported, slimmed, stamped with its metadata and checked; serialized."""
    if role == "encoder":
        module, example = _Encoder(model), torch.rand(TRACE_BATCH, *C.IMAGE_SHAPE)
        names, file = ([C.ENCODER_INPUT], list(C.ENCODER_OUTPUTS)), C.ENCODER_FILE
    else:
        module, example = _Decoder(model), torch.randn(TRACE_BATCH, model.config.latent_dim)
        names, file = ([C.DECODER_INPUT], [C.DECODER_OUTPUT]), C.DECODER_FILE
    proto = _export_graph(module, example, *names, opset)
    _slim(proto)
    _stamp(
        proto,
        C.build_metadata(
            role,
            model.config.latent_dim,
            producer_version=PRODUCER_VERSION,
            source=source,
            training=training,
        ),
    )
    _check(proto, file)
    return proto.SerializeToString()


def _export_graph(
    module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], opset: int
) -> onnx.ModelProto:
    """torch.onnx.export (the dynamo exporter) with a named dynamic batch axis, in memory."""
    batch = torch.export.Dim(C.BATCH_AXIS)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module.eval(),
                (example,),
                input_names=inputs,
                output_names=outputs,
                opset_version=opset,
                dynamic_shapes=({0: batch},),
                external_data=False,
                optimize=True,  # constant folding and dead-code removal by onnxscript
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types; all mean "it failed"
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}): {first}") from None
    return program.model_proto


def _slim(model: onnx.ModelProto) -> None:
    """Remove what the runtime never needs: exporter metadata, doc strings, value_info shape
    annotations, Identity nodes, unused initializers and opset domains; give the weights their
    seed names (fc1.weight, ...) and the nodes short readable names."""
    graph = model.graph
    model.doc_string = graph.doc_string = ""
    del model.metadata_props[:]
    del graph.value_info[:]
    del model.functions[:]  # the optimizer inlines everything; leftovers would be dead code
    for value in (*graph.input, *graph.output):
        value.doc_string = ""
        del value.metadata_props[:]
    _drop_identities(graph)
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    renames = {t.name: t.name.removeprefix(_PREFIX) for t in graph.initializer}
    for t in graph.initializer:
        t.name = renames[t.name]
    counts: dict[str, int] = {}
    io_names = {v.name for v in (*graph.input, *graph.output)}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.doc_string = ""
        del node.metadata_props[:]
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else ""
        base = weight.removesuffix(".weight") if weight.endswith(".weight") else node.op_type
        base = base if base != node.op_type else base.lower()
        counts[base] = counts.get(base, 0) + 1
        node.name = base if counts[base] == 1 else f"{base}_{counts[base]}"
        # Intermediate tensors are named after the node that makes them (fc1, relu, ...).
        for old in node.output:
            if old not in io_names:
                renames[old] = node.name
        node.output[:] = [renames.get(name, name) for name in node.output]
        if node.op_type == "Reshape" and len(node.input) > 1:
            renames[node.input[1]] = f"{node.name}.shape"
            node.input[1] = renames[node.input[1]]
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)
    domains = {node.domain for node in graph.node}
    keep_opsets = [o for o in model.opset_import if o.domain in domains or o.domain == ""]
    del model.opset_import[:]
    model.opset_import.extend(keep_opsets)


def _drop_identities(graph: onnx.GraphProto) -> None:
    """Bypass Identity nodes (the exporter leaves them for renamed outputs)."""
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        src, dst = node.input[0], node.output[0]
        producers = [n for n in graph.node if src in n.output]
        if dst in outputs:
            # The graph output keeps its contract name: its producer writes it directly.
            if not producers or src in outputs or src in {i.name for i in graph.input}:
                continue
            for n in graph.node:
                n.output[:] = [dst if o == src else o for o in n.output]
                n.input[:] = [dst if i == src else i for i in n.input]
        else:
            for n in graph.node:
                n.input[:] = [src if i == dst else i for i in n.input]
        graph.node.remove(node)


def _stamp(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Producer fields and the contract's metadata_props."""
    model.producer_name = C.PRODUCER
    model.producer_version = PRODUCER_VERSION
    model.graph.name = metadata[C.META_ROLE]
    onnx.helper.set_model_props(model, metadata)


def _check(model: onnx.ModelProto, name: str) -> None:
    """onnx.checker (full: with strict shape inference) and the contract's names and axes."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{name}: onnx.checker rejects the exported graph: {exc}") from None
    for value in (*model.graph.input, *model.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_param != C.BATCH_AXIS:
            raise ExportError(f"{name}: '{value.name}' has no dynamic '{C.BATCH_AXIS}' axis")
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{name}: weight '{t.name}' refers to external data")


def _training_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """Epochs and the last epoch's losses, from whatever metrics the checkpoint holds."""
    summary: dict[str, Any] = {"epochs": ckpt.epoch}
    last = ckpt.metrics[-1] if ckpt.metrics and isinstance(ckpt.metrics[-1], dict) else {}
    for key in ("test_loss", "test_bce", "test_kl", "train_loss"):
        value = last.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            summary[key] = round(float(value), 4)
    return summary


def _manifest(
    ckpt: Checkpoint,
    source: dict[str, str],
    training: dict[str, Any],
    blobs: dict[str, bytes],
    opset: int,
    seconds: float,
    report: Report,
) -> dict[str, Any]:
    """manifest.json's content; key names come from the contract the runtime reads."""
    return {
        C.MANIFEST_KEY_FORMAT: C.MANIFEST_FORMAT,
        C.MANIFEST_KEY_VERSION: C.FORMAT_VERSION,
        C.MANIFEST_FILES: {
            name: {C.MANIFEST_SHA256: hashlib.sha256(blob).hexdigest(), C.MANIFEST_BYTES: len(blob)}
            for name, blob in blobs.items()
        },
        C.MANIFEST_CHECKPOINT: {"name": source["checkpoint"], C.MANIFEST_SHA256: source["sha256"]},
        C.MANIFEST_LATENT_DIM: ckpt.config.latent_dim,
        C.MANIFEST_OPSET: opset,
        "model": ckpt.config.to_dict(),
        "training": training,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            C.PRODUCER: PRODUCER_VERSION,
        },
        "export": {
            "exporter": "torch.onnx.export(dynamo=True, optimize=True)",
            "trace_batch": TRACE_BATCH,
            "dynamic_axis": C.BATCH_AXIS,
            "seconds": round(seconds, 2),
        },
        "verification": {
            "backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
            "passed": report.passed,
            "comparisons": report.to_json(),
        },
    }
