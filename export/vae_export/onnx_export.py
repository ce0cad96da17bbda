"""model.pt -> encoder.onnx + decoder.onnx + manifest.json: export, verify, then keep all three.

The three files are one set (`fileio.Outputs`): the graphs are staged in a hidden folder beside
their targets, loaded from there by the runtime and checked against the torch model; only then is
the manifest staged (with the parity figures), the staged set loaded once more through it, and
the three renamed into place, the manifest last. Any failure, fault or signal before that leaves
the folder as it was; a crash between the renames leaves a new graph beside the old manifest,
which the runtime refuses by its SHA-256 (docs/guarantees.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from vae_runtime import contract as C
from vae_runtime.errors import DataError, check_int
from vae_runtime.fileio import Outputs, naming, sha256_file
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.sampling import sample_latents
from vae_runtime.scoring import Scorer
from vae_runtime.session import Decoder, Encoder
from vae_train.checkpoint import Checkpoint, load_checkpoint
from vae_train.data import TEST_IMAGES, TRAIN_IMAGES, find_images
from vae_train.model import VAE

from . import DEFAULT_OPSET, MIN_OPSET, triton
from .graphs import PRODUCER_VERSION, TRACE_BATCH, graph_bytes
from .precision import GATE_IMAGES, INT8_METHOD, gate, lower, measure, parse_graph_precisions
from .verify import BATCH_SIZES, Reference, Report, VerificationError, verify_graphs

# The score reference in manifest.json: the IWAE bound at this k and seed over the test set
REFERENCE_K = 64
REFERENCE_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the graphs by (role, precision), the manifest and the parity
    report (the quality figures are in the manifest's entries)."""

    graphs: dict[tuple[str, str], Path]
    manifest_path: Path
    manifest: C.Manifest
    report: Report

    @property
    def encoder(self) -> Path:
        """The fp32 encoder (or the first precision written)."""
        return next(p for (role, _), p in self.graphs.items() if role == "encoder")

    @property
    def decoder(self) -> Path:
        """The fp32 decoder (or the first precision written)."""
        return next(p for (role, _), p in self.graphs.items() if role == "decoder")


def export_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    precision: str | Sequence[str] = "fp32",
    force: bool = False,
    data_dir: Path | str | None = None,
    triton_repo: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export `checkpoint` (a model.pt) to encoder.onnx, decoder.onnx and manifest.json in
    `out_dir` (default: the checkpoint's folder; made if missing), verified against the torch
    model first, through the runtime that will load them.

    `precision`: the graphs to write, a subset of contract.PRECISIONS ("fp32,int8" or a
    sequence); int8 and fp16 graphs (encoder.int8.onnx, ...) are made from the verified fp32
    ones and must pass the quality gate against them (precision.LIMITS), which is measured on
    the staged files. `triton_repo`: also a Triton model repository of every graph written
    (vae_export.triton), one set with the other files. Real images for the checks come from
    MNIST's test images in `data_dir` when given (all of them for the gate and for the score
    reference: the IWAE bound's distribution, REFERENCE_K draws from REFERENCE_SEED, scored by
    the runtime's Scorer on the fp32 graphs and stored in manifest.json), else from the
    model's own decoded samples. Nothing in `out_dir` changes unless every check passes;
    existing files are replaced only with `force`. Raises a VaeError subclass: CheckpointError,
    OutputError, OutputRefusedError, DataError, InvalidArgumentError, ExportError,
    VerificationError or QualityError.
    """
    say = log or (lambda _line: None)
    check_int("opset", opset, MIN_OPSET, onnx.defs.onnx_opset_version())
    precisions = parse_graph_precisions(
        precision if isinstance(precision, str) else ",".join(precision)
    )
    path = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else path.parent
    images_file = _images_file(data_dir) if data_dir is not None else None
    files = {(role, p): out / C.graph_file(role, p) for p in precisions for role in C.ROLES}
    repo = triton.targets(Path(triton_repo), files) if triton_repo is not None else []
    targets = [*files.values(), *repo, out / C.MANIFEST_FILE]  # the manifest is renamed last
    reads = [path] if images_file is None else [path, images_file]
    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        ckpt = load_checkpoint(path)
        model = ckpt.build_model(path)
        lower_precisions = [p for p in precisions if p != "fp32"]
        # The whole test set: the score reference and the quality gate read it (8 MB);
        # verification uses the first 1,000.
        images, images_name = _reference_images(images_file, model, GATE_IMAGES)

        started = time.perf_counter()
        source = {"checkpoint": path.name, "sha256": sha256_file(path)}
        training = _training_summary(ckpt)
        blobs = {role: graph_bytes(role, model, opset, source, training) for role in C.ROLES}
        seconds = time.perf_counter() - started
        say(f"exported {path} in {seconds:.1f} s (opset {opset}); verifying against torch")
        # The fp32 pair: written as outputs when asked for, else only as the reference.
        fp32: dict[str, Path] = {}
        for role, blob in blobs.items():
            if "fp32" in precisions:
                outputs.write_bytes(files[(role, "fp32")], blob)
                fp32[role] = outputs.staged_path(files[(role, "fp32")])
            else:
                fp32[role] = outputs.write_scratch(out / C.graph_file(role), blob)
        references = _torch_references(model)
        # Loaded once, the reference of every check below. (Named, not a tuple being built:
        # a session freed while an interrupt unwinds waits for its thread pool, which a forked
        # copy, tests/faults/test_faults_signals.py's, does not have.)
        fp32_encoder = Encoder.load(fp32["encoder"])
        fp32_decoder = Decoder.load(fp32["decoder"])
        reference = (fp32_encoder, fp32_decoder)
        report = verify_graphs(
            *reference,
            references["encoder"],
            references["decoder"],
            images[: max(BATCH_SIZES)],
            images_name,
            model.config.latent_dim,
        )
        say(report.table())
        if not report.passed:
            raise VerificationError(report.failure_message() + f"; nothing written to {out}")
        score_reference = _score_reference(fp32, images, images_file, say)
        entries: dict[str, C.FileEntry] = {}
        if "fp32" in precisions:
            entries = {C.graph_file(r): C.FileEntry.of(b, r) for r, b in blobs.items()}
        qualities = []
        for p in lower_precisions:
            # A line per stage: each takes seconds, and a log or a pipe shows the gate at work.
            say(f"{p}: converting both graphs")
            lowered = {}
            for role in C.ROLES:
                with naming(files[(role, p)]):  # the quantizer's own temporary file
                    lowered[role] = lower(blobs[role], role, p)
            for role, blob in lowered.items():
                outputs.write_bytes(files[(role, p)], blob)
            staged = {role: outputs.staged_path(files[(role, p)]) for role in C.ROLES}
            say(f"{p}: measuring against fp32 on {images_name} ({len(images):,})")
            quality = measure(
                p,
                reference,
                (Encoder.load(staged["encoder"]), Decoder.load(staged["decoder"])),
                images,
                images_name,
            )
            say(quality.summary())
            qualities.append(quality)
            for role, blob in lowered.items():
                entries[C.graph_file(role, p)] = C.FileEntry.of(
                    blob, role, p, quality.for_role(role)
                )
        gate(qualities, out)
        if triton_repo is not None:  # the bytes of each graph as staged above
            staged_graphs = {key: outputs.staged_path(t).read_bytes() for key, t in files.items()}
            triton.stage(outputs, Path(triton_repo), staged_graphs, model.config.latent_dim)
        manifest = _manifest(
            ckpt, source, training, entries, opset, seconds, report, score_reference
        )
        outputs.write_bytes(out / C.MANIFEST_FILE, manifest.to_bytes())
        for (role, _), target in files.items():  # the set as users will load it: through
            _RUNTIME[role].load(outputs.staged_path(target))
        outputs.commit()  # the manifest now beside the staged graphs
    say(f"wrote {', '.join(str(t) for t in targets)}")
    return ExportResult(files, targets[-1], manifest, report)


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


def _reference_images(images_file: Path | None, model: VAE, limit: int) -> tuple[np.ndarray, str]:
    """Real-looking images for the checks: float32 (N, 1, 28, 28) and their name; from
    `images_file` the first `limit`, else max(BATCH_SIZES) of the model's decoded samples."""
    n = max(BATCH_SIZES)
    if images_file is not None:
        raw = read_idx(images_file, IMAGES_MAGIC, limit=limit)
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


def _score_reference(
    fp32: dict[str, Path],
    images: np.ndarray,
    images_file: Path | None,
    say: Callable[[str], None],
) -> C.ScoreReference:
    """The distribution of the IWAE bound (REFERENCE_K draws, seed REFERENCE_SEED) over
    `images` (the test set, else the decoded samples), scored by the runtime's Scorer on the
    verified fp32 graphs as staged (`fp32`: their paths by role): what every consumer reads a
    percentile from."""
    started = time.perf_counter()
    # Loaded as Scorer.load loads them (sessions that do not spin between runs)
    encoder = Encoder.load(fp32["encoder"], spinning=False)
    decoder = Decoder.load(fp32["decoder"], spinning=False)
    scores = Scorer(encoder, decoder).score(images, k=REFERENCE_K, seed=REFERENCE_SEED)
    if images_file is None:
        where = "model's own decoded samples (no data folder given)"
    else:
        where = "MNIST test set" if images_file.name.startswith("t10k") else "MNIST training set"
    result = C.ScoreReference.of(scores.iwae, k=REFERENCE_K, seed=REFERENCE_SEED, source=where)
    say(
        f"score reference: IWAE bound (k = {REFERENCE_K}, seed {REFERENCE_SEED}) of "
        f"{len(images):,} images of the {where}, mean {result.mean:.2f} nats, in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return result


# The runtime class that loads each role's graph (its `interface` is the role's declaration).
_RUNTIME: dict[str, type[Encoder] | type[Decoder]] = {g.role: g for g in (Encoder, Decoder)}


def _torch_references(model: VAE) -> dict[str, Reference]:
    """The torch model itself (not the export wrappers, whose mistakes the check must catch)
    as numpy -> named numpy outputs functions, by role: each output named and shaped as the
    role's interface declares it."""
    # What computes each role in torch, as a tuple of outputs in declared order.
    compute: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]] = {
        "encoder": lambda image: model.encode(image.flatten(1)),  # (B, 1, 28, 28) -> 2x (B, d)
        "decoder": lambda z: _image_and_logits(model.decode_logits(z)),  # (B, d) -> 2x (B, 784)
    }
    latent_dim = model.config.latent_dim

    def reference(role: str) -> Reference:
        outputs = C.INTERFACES[role].outputs

        def run(batch: np.ndarray) -> dict[str, np.ndarray]:
            with torch.no_grad():
                values = compute[role](torch.from_numpy(batch))
            return {
                t.name: v.reshape(-1, *t.shape(latent_dim)).numpy()
                for t, v in zip(outputs, values, strict=True)
            }

        return run

    return {role: reference(role) for role in C.INTERFACES}


def _image_and_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's declared outputs in order: sigmoid pixel means, then the logits."""
    return torch.sigmoid(logits), logits


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
    entries: dict[str, C.FileEntry],
    opset: int,
    seconds: float,
    report: Report,
    score_reference: C.ScoreReference,
) -> C.Manifest:
    """manifest.json for this export: the contract's `Manifest`, with the export's details."""
    return C.Manifest(
        files=entries,
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
                **(
                    {"int8": INT8_METHOD}
                    if any(e.precision == "int8" for e in entries.values())
                    else {}
                ),
            },
            "verification": {
                "backend": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
                "passed": report.passed,
                "comparisons": report.to_json(),
            },
            C.SCORE_REFERENCE: score_reference.to_json(),
        },
    )
