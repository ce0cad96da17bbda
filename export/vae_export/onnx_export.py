"""model.pt -> encoder.onnx + decoder.onnx + manifest.json: export, verify, then keep all three.

The three files are one set (`fileio.Outputs`): the graphs are staged in a hidden folder beside
their targets, loaded from there by the runtime and checked against the torch model; only then is
the manifest staged (with the parity figures), the staged set loaded once more through it, and
the three renamed into place, the manifest last. Any failure, fault or signal before that leaves
the folder as it was; a crash between the renames leaves a new graph beside the old manifest,
which the runtime refuses by its SHA-256 (README: "Files and guarantees").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from vae_runtime import contract as C
from vae_runtime.errors import DataError, check_int
from vae_runtime.fileio import Outputs, sha256_file
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder, Encoder
from vae_train.checkpoint import Checkpoint, load_checkpoint
from vae_train.data import TEST_IMAGES, TRAIN_IMAGES, find_images
from vae_train.model import VAE

from . import DEFAULT_OPSET, MIN_OPSET
from .graphs import PRODUCER_VERSION, TRACE_BATCH, graph_bytes
from .verify import BATCH_SIZES, Reference, Report, VerificationError, verify_graphs


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the three paths, the manifest and the parity report."""

    encoder: Path
    decoder: Path
    manifest_path: Path
    manifest: C.Manifest
    report: Report


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
    `out_dir` (default: the checkpoint's folder; made if missing), verified against the torch
    model first, through the runtime that will load them.

    Real images for the encoder's check come from MNIST's test images in `data_dir` when given,
    else from the model's own decoded samples. Nothing in `out_dir` changes unless every check
    passes; existing files are replaced only with `force`. Raises a VaeError subclass:
    CheckpointError, OutputError, OutputRefusedError, DataError, InvalidArgumentError,
    ExportError or VerificationError.
    """
    say = log or (lambda _line: None)
    check_int("opset", opset, MIN_OPSET, onnx.defs.onnx_opset_version())
    path = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else path.parent
    images_file = _images_file(data_dir) if data_dir is not None else None
    names = (C.ENCODER_FILE, C.DECODER_FILE, C.MANIFEST_FILE)  # the manifest is renamed last
    targets = [out / name for name in names]
    reads = [path] if images_file is None else [path, images_file]
    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        ckpt = load_checkpoint(path)
        model = ckpt.build_model(path)
        images, images_name = _reference_images(images_file, model)

        started = time.perf_counter()
        source = {"checkpoint": path.name, "sha256": sha256_file(path)}
        training = _training_summary(ckpt)
        blobs = {
            C.ENCODER_FILE: graph_bytes("encoder", model, opset, source, training),
            C.DECODER_FILE: graph_bytes("decoder", model, opset, source, training),
        }
        seconds = time.perf_counter() - started
        say(f"exported {path} in {seconds:.1f} s (opset {opset}); verifying against torch")
        for name, blob in blobs.items():
            outputs.write_bytes(out / name, blob)
        staged = {name: outputs.staged_path(out / name) for name in blobs}
        encode, decode = _torch_references(model)
        report = verify_graphs(
            staged[C.ENCODER_FILE],
            staged[C.DECODER_FILE],
            encode,
            decode,
            images,
            images_name,
            model.config.latent_dim,
        )
        say(report.table())
        if not report.passed:
            raise VerificationError(report.failure_message() + f"; nothing written to {out}")
        manifest = _manifest(ckpt, source, training, blobs, opset, seconds, report)
        outputs.write_bytes(out / C.MANIFEST_FILE, manifest.to_bytes())
        Encoder.load(staged[C.ENCODER_FILE])  # the set as users will load it: through the
        Decoder.load(staged[C.DECODER_FILE])  # manifest now beside the staged graphs
        outputs.commit()
    say(f"wrote {', '.join(str(t) for t in targets)}")
    return ExportResult(targets[0], targets[1], targets[2], manifest, report)


def _images_file(data_dir: Path | str) -> Path:
    """MNIST's test images (else training images) in `data_dir`."""
    folder = Path(data_dir)
    found = None
    if folder.is_dir():
        found = find_images(folder, TEST_IMAGES) or find_images(folder, TRAIN_IMAGES)
    if found is None:
        raise DataError(
            f"data folder {folder}: no {TEST_IMAGES}[.gz] or {TRAIN_IMAGES}[.gz] in it; "
            "point --data-dir at MNIST's IDX files, or leave it out"
        )
    return found


def _reference_images(images_file: Path | None, model: VAE) -> tuple[np.ndarray, str]:
    """Real-looking images for the encoder's check: float32 (N, 1, 28, 28) and their name."""
    n = max(BATCH_SIZES)
    if images_file is not None:
        raw = read_idx(images_file, IMAGES_MAGIC, limit=n)  # only the images the check uses
        if raw.ndim != 3 or raw.shape[1:] != C.IMAGE_SHAPE[1:] or raw.shape[0] == 0:
            raise DataError(
                f"{images_file}: images of shape {list(raw.shape)}, expected [N, 28, 28]"
            )
        images = raw.astype(np.float32) / 255.0
        return images.reshape(-1, *C.IMAGE_SHAPE), f"{images_file.name.split('-')[0]} images"
    # No data: the model's own decoded samples look like what it was trained on.
    z = torch.from_numpy(sample_latents(n, model.config.latent_dim, seed=0))
    with torch.no_grad():
        decoded = model.decode(z).numpy()
    return decoded.reshape(-1, *C.IMAGE_SHAPE), "decoded samples"


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


def _training_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """Epochs and the last epoch's losses, from whatever metrics the checkpoint holds."""
    summary: dict[str, Any] = {"epochs": ckpt.epoch}
    last = ckpt.metrics[-1] if ckpt.metrics else {}
    for key in ("test_loss", "test_bce", "test_kl", "train_loss"):
        value = last.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
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
) -> C.Manifest:
    """manifest.json for this export: the contract's `Manifest`, with the export's details."""
    roles = {C.ENCODER_FILE: "encoder", C.DECODER_FILE: "decoder"}
    return C.Manifest(
        files={name: C.FileEntry.of(blob, roles[name]) for name, blob in blobs.items()},
        latent_dim=ckpt.config.latent_dim,
        checkpoint={"name": source["checkpoint"], C.MANIFEST_SHA256: source["sha256"]},
        details={
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
        },
    )
