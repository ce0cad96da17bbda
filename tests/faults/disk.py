"""What the disk fault tests share: the work folder's layout, the commands' output files, and
the assertions on a fault's one line."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from harness import TINY_TRAIN, Tiny
from helpers import expect_error
from typer.testing import CliRunner, Result

from vae_export.cli import app as export_app
from vae_runtime.cli import generate_app, interpolate_app, reconstruct_app
from vae_train.cli import app as train_app

STAGING = ".mnist-vae-"  # fileio's hidden staging folders
BUSY = "another mnist-vae command is writing into this folder"
DEC, ENC, MANIFEST = "onnx/decoder.onnx", "onnx/encoder.onnx", "onnx/manifest.json"
TRAIN_IMAGES, TEST_IMAGES = "data/train-images-idx3-ubyte.gz", "data/t10k-images-idx3-ubyte.gz"
TRAIN_FILES = (  # write order
    "metrics.jsonl",
    "samples.png",
    "reconstructions.png",
    "loss.png",
    "progress.gif",
    "model.pt",
)
EXPORT_FILES = ("encoder.onnx", "decoder.onnx", "manifest.json")  # write order
APPS: dict[str, typer.Typer] = {
    "vae-generate": generate_app,
    "vae-interpolate": interpolate_app,
    "vae-reconstruct": reconstruct_app,
    "vae-train": train_app,
    "vae-export": export_app,
}
TRAIN = ("--data-dir", "data", "--epochs", "1", "-q", *TINY_TRAIN)  # TRAIN[2:]: download
CACHED = "mnist-vae/mnist/train-images-idx3-ubyte.gz"  # under XDG_CACHE_HOME
runner = CliRunner()
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs the train extra (torch)"
)


def words(line: str) -> tuple[str, ...]:
    """A command line's arguments (no path in these tests holds a space)."""
    return tuple(line.split())


def populate(root: Path, tiny: Tiny, digits: tuple[bytes, bytes]) -> Path:
    """`root` with onnx/ (encoder, decoder, manifest), data/, run/model.pt, a.png, b.png,
    other.txt (someone else's file) and an empty out/. Returns `root`."""
    (root / "onnx").mkdir(parents=True)
    for source in (tiny.encoder, tiny.decoder, tiny.manifest):
        shutil.copy2(source, root / "onnx" / source.name)
    shutil.copytree(tiny.data, root / "data")
    (root / "run").mkdir()
    shutil.copy2(tiny.model, root / "run" / "model.pt")
    (root / "a.png").write_bytes(digits[0])
    (root / "b.png").write_bytes(digits[1])
    (root / "other.txt").write_bytes(b"someone else's file\n")
    (root / "out").mkdir()
    return root


def invoke(name: str, args: Sequence[str]) -> Result:
    """Command `name` in this process, in the current folder."""
    return runner.invoke(APPS[name], [str(a) for a in args])


def write_old(root: Path, paths: Sequence[str]) -> None:
    """Older outputs at `paths` (relative to `root`), each with bytes of its own."""
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"old content of {rel}\n".encode())


def leftovers(root: Path) -> list[str]:
    """Staging folders, rollback copies or temporary files anywhere under `root`."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((STAGING, ".old-")) or p.name.endswith(".tmp")
    ]


def expect_fault(result: Any, target: str, reason: str, code: int = 1) -> str:
    """One line, exit `code`, naming the user's path `target` (a regex) and the OS `reason`,
    never a staging or temporary name."""
    line = expect_error(result, code, f"{target}: .*{reason}")
    for hidden in (STAGING, ".old-", ".tmp"):
        assert hidden not in line, line
    return line


def _images(folder: str, n: int) -> tuple[str, ...]:
    return tuple(f"{folder}/sample_{i:05d}.png" for i in range(n))
