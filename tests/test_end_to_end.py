"""train -> export -> generate, run exactly as a user would: the installed console scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BIN = Path(sys.executable).parent


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one console script; fail the test with its stderr if it exits non-zero."""
    proc = subprocess.run(
        [str(BIN / str(args[0])), *map(str, args[1:])],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}: {proc.stderr}"
    return proc


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def test_train_export_generate(tmp_path: Path, mnist_dir: Path) -> None:
    _run("vae-train", "--epochs", "2", "--data-dir", mnist_dir, "--quiet", cwd=tmp_path)
    for name in ("model.pt", "samples.png", "reconstructions.png", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2

    exported = _run("vae-export", "model.pt", cwd=tmp_path)
    assert "decoder" in exported.stdout
    assert "encoder" in exported.stdout
    for name in ("encoder.onnx", "decoder.onnx", "manifest.json"):
        assert (tmp_path / name).is_file(), name

    # Deploy: the graphs and manifest alone, in another folder, as shipped to another machine.
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "manifest.json"):
        shutil.copy(tmp_path / name, deploy / name)
    _run("vae-generate", "--onnx", "decoder.onnx", cwd=deploy)
    assert _grey(deploy / "samples.png").shape == (152, 152)  # 5 x (28 + 2) + 2

    # vae-train drew its samples.png with torch from seed 1; onnxruntime from the same seed must
    # draw the same grid, to within one grey level of rounding.
    _run("vae-generate", "--onnx", "decoder.onnx", "--seed", "1", "--out", "ort.png", cwd=tmp_path)
    torch_grid, ort_grid = _grey(tmp_path / "samples.png"), _grey(tmp_path / "ort.png")
    assert np.abs(torch_grid - ort_grid).max() <= 1
    assert ort_grid.std() > 10  # not a blank or flat image

    _run(
        "vae-reconstruct",
        "--encoder",
        "encoder.onnx",
        "--decoder",
        "decoder.onnx",
        mnist_dir / "t10k-images-idx3-ubyte.gz",
        "--out",
        "recon.png",
        cwd=deploy,
    )
    assert _grey(deploy / "recon.png").std() > 10
