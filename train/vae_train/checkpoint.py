"""model.pt: a versioned dict of plain types and tensors that `torch.load(weights_only=True)` reads.

Layout (format version 1):
    format          "mnist-vae/checkpoint"
    format_version  1
    config          VAEConfig as a dict            (rebuilds the model)
    state_dict      the model's tensors
    run             the run's settings: epochs, batch_size, lr, seed, device, data
    epoch           epochs finished
    metrics         one dict per finished epoch (train/test loss, bce, kl, seconds)
    optimizer       Adam's state_dict              (for --resume)
    rng             generator states, {"shuffle": ByteTensor, "noise": ByteTensor}
    versions        {"torch": ..., "mnist-vae": ...}
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vae_runtime.errors import InvalidArgumentError, ModelFileError
from vae_runtime.fileio import atomic_output

from .model import VAE, VAEConfig

CHECKPOINT_FORMAT = "mnist-vae/checkpoint"
CHECKPOINT_VERSION = 1


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

    def build_model(self, path: Path | str = "checkpoint") -> VAE:
        """The VAE this checkpoint describes, weights loaded, in eval mode."""
        model = VAE(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[1:3]) or first[0]
            raise CheckpointError(
                f"{path}: weights do not fit the stored config {self.config.to_dict()}: {detail}"
            ) from None
        return model.eval()


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write `checkpoint` to `path` atomically (temporary file, then rename)."""
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
    with atomic_output(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read and check a model.pt. Never unpickles arbitrary objects: `weights_only=True` only,
    and a file it refuses is reported, not retried unsafely. Raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; train one with `vae-train`")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, expected a model.pt file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (not a zip archive; truncated or another format)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(_refused(path, exc)) from None
        raise CheckpointError(
            f"{path}: damaged or truncated checkpoint: {_first_line(exc)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an mnist-vae checkpoint (no '{CHECKPOINT_FORMAT}' format tag)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: bad format version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this mnist-vae reads "
            f"({CHECKPOINT_VERSION}); upgrade mnist-vae"
        )
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is missing or not a dict of tensors")
    try:
        config = VAEConfig.from_dict(dict(payload.get("config") or {}))
    except (InvalidArgumentError, TypeError) as exc:
        raise CheckpointError(f"{path}: bad model config: {exc}") from None
    return Checkpoint(
        config=config,
        state_dict=state,
        run=dict(payload.get("run") or {}),
        epoch=int(payload.get("epoch") or 0),
        metrics=list(payload.get("metrics") or []),
        optimizer=payload.get("optimizer"),
        rng=dict(payload.get("rng") or {}),
        versions=dict(payload.get("versions") or {}),
    )


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
