"""model.pt, the contract between training and export: one table of bad checkpoints (missing,
corrupt, foreign, tampered field by field), each refused in one line naming the file by every
reader: `load_checkpoint`, `vae-train --resume` and `vae-export`; nothing on disk changes."""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import expect_error
from typer.testing import CliRunner

from vae_export import cli as export_cli
from vae_runtime.errors import InvalidArgumentError
from vae_train import cli as train_cli
from vae_train.checkpoint import (
    CHECKPOINT_VERSION,
    COMPUTE_DTYPE_KEY,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from vae_train.data import MnistImages
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings, train

CONFIG = VAEConfig(hidden_dim=16, latent_dim=3)
SETTINGS = TrainSettings(epochs=1, batch_size=64, seed=3, device="cpu")


@dataclasses.dataclass
class Opaque:
    """An arbitrary class: weights_only=True refuses to unpickle it."""

    value: int = 1


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory, make_digits: Callable[..., Any]) -> Path:
    """A real one-epoch model.pt from vae-train's loop."""
    images, _ = make_digits(128, 9)
    out = tmp_path_factory.mktemp("good")
    train(SETTINGS, CONFIG, out_dir=out, data=MnistImages(images, images[:32], "synthetic"))
    return out / "model.pt"


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path, Path], None]:
    """A writer: the good checkpoint's payload, changed, saved at the path."""

    def write(path: Path, good: Path) -> None:
        payload = torch.load(good, weights_only=True)
        change(payload)
        torch.save(payload, path)

    return write


def _set(key: str, value: Any) -> Callable[[Path, Path], None]:
    return _edit(lambda p: p.__setitem__(key, value))


def _cut(path: Path, good: Path) -> None:
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zip_of_text(path: Path, good: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


ALL = ("load", "train", "export")
# kind: (writer or None for "absent", what the one line says, which readers refuse it)
BAD: dict[str, tuple[Callable[[Path, Path], None] | None, str, tuple[str, ...]]] = {
    "missing": (None, "no such file", ALL),
    "folder": (lambda p, g: p.mkdir(), "is a folder", ALL),
    "fifo": (lambda p, g: os.mkfifo(p), "is not a regular file", ALL),
    "empty": (lambda p, g: p.write_bytes(b""), "file is empty", ALL),
    "truncated": (_cut, "not a PyTorch checkpoint|damaged or truncated", ALL),
    "text": (lambda p, g: p.write_text("hello\n"), "not a PyTorch checkpoint", ALL),
    "zip of text": (_zip_of_text, "damaged or truncated|not an mnist-vae", ALL),
    "foreign": (lambda p, g: torch.save({"w": torch.zeros(3)}, p), "not an mnist-vae", ALL),
    "pickled object": (_set("run", {"x": Opaque()}), r"pickled Python objects \(.*Opaque", ALL),
    "newer": (_set("format_version", CHECKPOINT_VERSION + 1), "version 2 is newer", ALL),
    "version as text": (_set("format_version", "1"), "bad checkpoint version '1'", ALL),
    "no state": (_edit(lambda p: p.pop("state_dict")), "'state_dict' is missing", ALL),
    "int weights": (
        _set("state_dict", {"fc1.weight": torch.zeros(2, dtype=torch.int64)}),
        "not a dict of float tensors",
        ALL,
    ),
    "weights of another shape": (
        _set("config", {"hidden_dim": 400, "latent_dim": 20}),
        "do not fit the stored config",
        ALL,
    ),
    "config not a dict": (_set("config", [16, 3]), "model config must be a dict", ALL),
    "config unknown key": (_set("config", {"hidden_dim": 16, "depth": 3}), "unknown model", ALL),
    "config huge": (_set("config", {"hidden_dim": 10**9}), r"hidden_dim must be in 1\.\.", ALL),
    "epoch as text": (_set("epoch", "3"), "'epoch' is '3'", ALL),
    "epoch negative": (_set("epoch", -1), "'epoch' is -1", ALL),
    "metrics with NaN": (_set("metrics", [{"test_loss": float("nan")}]), "'metrics'", ALL),
    "metrics with a tensor": (_set("metrics", [{"x": torch.ones(2)}]), "'metrics'", ALL),
    "metrics not a list": (_set("metrics", {"epoch": 1}), "'metrics'", ALL),
    "run not a dict": (_set("run", [1, 2]), "'run' is not a dict", ALL),
    "optimizer not a dict": (_set("optimizer", [1]), "'optimizer' is not a dict", ALL),
    "no optimizer": (_set("optimizer", None), "holds no optimizer", ("train",)),
    "optimizer garbage": (_set("optimizer", {"state": 5}), "resume state is damaged", ("train",)),
    "rng garbage": (
        _set("rng", {"shuffle": torch.zeros(3), "noise": torch.zeros(3)}),
        "resume state is damaged",
        ("train",),
    ),
    "Adam state of another shape": (
        _edit(lambda p: p["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(1))),
        "resume state is damaged",
        ("train",),
    ),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    ("kind", "reader"),
    [(kind, reader) for kind, (_, _, readers) in BAD.items() for reader in readers],
)
def test_bad_checkpoints_are_one_line_and_change_nothing(
    tmp_path: Path, good: Path, mnist_dir: Path, kind: str, reader: str
) -> None:
    write, pattern, _ = BAD[kind]
    path = tmp_path / "in" / "model.pt"
    path.parent.mkdir()
    if write is not None:
        write(path, good)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "manifest.json", "samples.png"):
        (out / name).write_bytes(b"previous " + name.encode())
    before = snapshot(out)
    if reader == "load":
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_checkpoint(path).build_model(path)
        assert str(info.value).startswith(str(path))
        assert "\n" not in str(info.value)
    elif reader == "train":
        args = ["--resume", path, "--out", out, "--data-dir", mnist_dir, "-q", "--force"]
        args += [
            "--epochs",
            "3",
            "--hidden-dim",
            "16",
            "--latent-dim",
            "3",
            "--batch-size",
            "64",
            "--seed",
            "3",
        ]
        result = CliRunner().invoke(train_cli.app, list(map(str, args)), prog_name="vae-train")
        assert str(path) in expect_error(result, 1, pattern)
    else:
        args = [path, "--out", out, "--force", "-q"]
        result = CliRunner().invoke(export_cli.app, list(map(str, args)), prog_name="vae-export")
        line = expect_error(result, 1, pattern)
        assert str(path) in line
        assert "enforce fail" not in line  # torch's C++ error prefix is not for users
        assert "weights_only" not in line  # never a hint to load it unsafely
    assert snapshot(out) == before


def test_the_good_checkpoint_is_read_by_all_three(good: Path, tmp_path: Path) -> None:
    # Guards the table above: its source really is a checkpoint every reader accepts.
    ckpt = load_checkpoint(good)
    assert ckpt.config == CONFIG
    assert ckpt.epoch == 1
    model = ckpt.build_model(good)
    assert not model.training
    save_checkpoint(ckpt, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    assert all(torch.equal(again.state_dict[k], v) for k, v in ckpt.state_dict.items())
    assert again.metrics == ckpt.metrics
    assert isinstance(ckpt, Checkpoint)
    assert np.isfinite(ckpt.metrics[-1]["test_loss"])


@pytest.mark.parametrize("stored", ["fp32", "bf16", None])
def test_a_checkpoint_from_before_the_compute_dtype_rename_still_loads_and_resumes(
    good: Path, tmp_path: Path, stored: str | None, make_digits: Callable[..., Any]
) -> None:
    """model.pt files written before run["compute_dtype"] kept the training arithmetic as
    run["precision"] (and the earliest, none at all: fp32); they load under the new key and
    resume with the same rule, naming the command line's --precision."""

    def old_key(payload: dict[str, Any]) -> None:
        payload["run"].pop(COMPUTE_DTYPE_KEY)
        if stored is not None:
            payload["run"]["precision"] = stored

    path = tmp_path / "old" / "model.pt"
    path.parent.mkdir()
    _edit(old_key)(path, good)
    assert "precision" not in load_checkpoint(good).run  # what files are written with now
    ckpt = load_checkpoint(path)
    assert ckpt.run.get(COMPUTE_DTYPE_KEY) == stored and "precision" not in ckpt.run
    images, _ = make_digits(128, 9)
    data = MnistImages(images, images[:32], "synthetic")
    resume = dataclasses.replace(SETTINGS, epochs=2)
    if stored == "bf16":  # the run was bf16: resuming it as fp32 is refused in the flag's words
        with pytest.raises(InvalidArgumentError, match="trained with --precision bf16"):
            train(resume, CONFIG, out_dir=path.parent, data=data, resume=path)
        return
    resumed = train(resume, CONFIG, out_dir=path.parent, data=data, resume=path)
    assert resumed.epoch == 2 and resumed.run[COMPUTE_DTYPE_KEY] == "fp32"
    assert "precision" not in load_checkpoint(path).run
