"""model.pt: a versioned dict of plain types and tensors that `torch.load(weights_only=True)` reads.

Layout (format version 1):
    format          "mnist-vae/checkpoint"
    format_version  1
    config          VAEConfig as a dict            (rebuilds the model)
    state_dict      the model's tensors
    run             the run's settings: epochs, batch_size, lr, seed, device, data, compute_dtype,
                    binarize (the last two absent in files of earlier versions: fp32, False;
                    compute_dtype stored as "precision" before it was renamed: read as either)
    epoch           epochs finished
    metrics         one dict per finished epoch (train/test loss, bce, kl, seconds)
    optimizer       Adam's state_dict              (for --resume)
    rng             generator states, {"shuffle": ByteTensor, "noise": ByteTensor}
    versions        {"torch": ..., "mnist-vae": ...}
    progress        progress.gif's frames, {"epochs": int64 (F,), "images": uint8 (F, 25, 28, 28)}
                    (optional: files of earlier versions have none; readers that do not know it
                    ignore it, so the format version stays 1)
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_runtime.contract import check_format_version
from vae_runtime.errors import InvalidArgumentError, ModelFileError, is_int
from vae_runtime.fileio import write_file

from .model import VAE, VAEConfig

CHECKPOINT_FORMAT = "mnist-vae/checkpoint"
CHECKPOINT_VERSION = 1
MAX_EPOCH = 10_000  # epochs a run may reach (vae-train --epochs)
PROGRESS_IMAGES = (25, 28, 28)  # one progress.gif frame: the 25 decoded sample latents
# run[COMPUTE_DTYPE_KEY]: the training arithmetic (vae-train --precision), fp32 or bf16. Files
# written before the rename store it as run[_OLD_COMPUTE_DTYPE_KEY]; loading renames the key.
COMPUTE_DTYPE_KEY = "compute_dtype"
_OLD_COMPUTE_DTYPE_KEY = "precision"


class CheckpointError(ModelFileError):
    """model.pt is missing, unreadable, foreign, tampered with or inconsistent."""


@dataclass
class Checkpoint:
    """A loaded (or about to be saved) model.pt."""

    config: VAEConfig
    state_dict: dict[str, torch.Tensor]
    run: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    progress: dict[str, torch.Tensor] = field(default_factory=dict)

    def build_model(self, path: Path | str = "checkpoint") -> VAE:
        """The VAE this checkpoint describes, weights loaded, in eval mode."""
        model = VAE(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = (" ".join(line.strip() for line in first[1:3]) or first[0])[:200]
            raise CheckpointError(
                f"{path}: weights do not fit the stored config {self.config.to_dict()}: {detail}"
            ) from None
        return model.eval()


def checkpoint_bytes(checkpoint: Checkpoint) -> bytes:
    """model.pt's bytes: serialized in memory, so that writing them is one plain file write
    whose errors (a full disk) name the file, staged and renamed like every other output."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "config": checkpoint.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in checkpoint.state_dict.items()},
        "run": checkpoint.run,
        "epoch": checkpoint.epoch,
        "metrics": checkpoint.metrics,
        "optimizer": checkpoint.optimizer,
        "rng": checkpoint.rng,
        "versions": checkpoint.versions,
    }
    if checkpoint.progress:
        payload["progress"] = checkpoint.progress
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(checkpoint: Checkpoint, path: Path | str) -> None:
    """Write `checkpoint` to `path` atomically (staged, then renamed; see fileio.Outputs)."""
    write_file(Path(path), checkpoint_bytes(checkpoint))


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and check a model.pt, every field. Never unpickles arbitrary objects:
    `weights_only=True` only, and a file it refuses is reported, not retried unsafely.
    Raises CheckpointError naming the file and the field."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; train one with `vae-train`") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{path}: is a folder, expected a model.pt file")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: is not a regular file, expected a model.pt file")
    if st.st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or another format)"
            )
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for bad files
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(_refused(path, exc)) from None
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint: {_first_line(exc)}"
        ) from None
    return _parse(payload, path)


def _parse(payload: Any, path: Path) -> Checkpoint:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; not a model.pt that vae-train wrote")

    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an mnist-vae checkpoint (no '{CHECKPOINT_FORMAT}' format tag)"
        )
    check_format_version(
        payload.get("format_version"),
        str(path),
        kind="checkpoint",
        newest=CHECKPOINT_VERSION,
        fix="not a model.pt that vae-train wrote",
        error=CheckpointError,
    )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.is_floating_point()
        for k, v in state.items()
    ):
        raise bad("'state_dict' is missing or not a dict of float tensors")
    try:
        config = VAEConfig.from_dict(payload.get("config"))
    except (InvalidArgumentError, TypeError) as exc:
        raise bad(f"bad model config: {exc}") from None
    epoch = payload.get("epoch", 0)
    if not is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
        raise bad(f"'epoch' is {_short(epoch)}, expected 0..{MAX_EPOCH}")
    metrics = payload.get("metrics", [])
    if not isinstance(metrics, list) or not all(_is_record(m) for m in metrics):
        raise bad("'metrics' is not a list of records of finite numbers")
    for name in ("run", "rng", "versions"):
        if not isinstance(payload.get(name, {}), dict):
            raise bad(f"'{name}' is not a dict")
    if not all(_is_plain(v) for v in payload.get("run", {}).values()):
        raise bad("'run' holds values other than numbers and text")
    optimizer = payload.get("optimizer")
    if optimizer is not None and not isinstance(optimizer, dict):
        raise bad("'optimizer' is not a dict")
    progress = payload.get("progress", {})
    if not _is_progress(progress, epoch):
        raise bad(f"'progress' is not epochs 1..{epoch} with uint8 images {list(PROGRESS_IMAGES)}")
    return Checkpoint(
        config=config,
        state_dict=state,
        run=_current_run(payload.get("run", {})),
        epoch=epoch,
        metrics=metrics,
        optimizer=optimizer,
        rng=dict(payload.get("rng", {})),
        versions={str(k): str(v)[:100] for k, v in payload.get("versions", {}).items()},
        progress=dict(progress),
    )


def _current_run(run: dict[str, Any]) -> dict[str, Any]:
    """The stored run settings under today's keys: the old "precision" is the compute dtype."""
    current = dict(run)
    if _OLD_COMPUTE_DTYPE_KEY in current:
        old = current.pop(_OLD_COMPUTE_DTYPE_KEY)
        current.setdefault(COMPUTE_DTYPE_KEY, old)
    return current


def _is_progress(value: Any, epoch: int) -> bool:
    """progress.gif's frames: absent ({}), or increasing epochs in 1..epoch, one uint8 image
    stack each."""
    if not isinstance(value, dict):
        return False
    if not value:
        return True
    epochs, images = value.get("epochs"), value.get("images")
    if set(value) != {"epochs", "images"}:
        return False
    if not isinstance(epochs, torch.Tensor) or not isinstance(images, torch.Tensor):
        return False
    if epochs.dtype != torch.int64 or epochs.ndim != 1 or images.dtype != torch.uint8:
        return False
    if tuple(images.shape) != (epochs.numel(), *PROGRESS_IMAGES):
        return False
    listed = epochs.tolist()
    return all(1 <= e <= epoch for e in listed) and listed == sorted(set(listed))


def _is_plain(value: Any) -> bool:
    """A run setting as vae-train stores it: a number, a string, a bool or None."""
    return value is None or (
        isinstance(value, int | float | str)
        and not (isinstance(value, float) and not math.isfinite(value))
    )


def _is_record(value: Any) -> bool:
    """One metrics.jsonl record: str keys, finite int/float values (what JSON can hold)."""
    return isinstance(value, dict) and all(
        isinstance(k, str)
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        for k, v in value.items()
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refused(path: Path, exc: pickle.UnpicklingError) -> str:
    """The safe loader met a pickled object: say so, and never suggest loading it unsafely."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return (
        f"{path}: holds pickled Python objects{what}, which mnist-vae refuses to load; "
        "it was not written by vae-train or has been tampered with"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    # torch's C++ errors start with "[enforce fail at inline_container.cc:180] . ": not for users
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", line)[:200]
