"""`vae-export` as a user runs it: the table, --force, --quiet, and every bad input in one line."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import expect_error
from typer.testing import CliRunner

from vae_export import cli, onnx_export
from vae_export.__main__ import main as export_main
from vae_runtime.contract import DECODER_FILE, ENCODER_FILE, MANIFEST_FILE

OUTPUTS = (ENCODER_FILE, DECODER_FILE, MANIFEST_FILE)


@dataclasses.dataclass
class Opaque:
    """An arbitrary class: weights_only=True refuses to unpickle it."""

    value: int = 1


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_ino) for p in sorted(folder.iterdir())}


def _old_outputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        (folder / name).write_bytes(f"previous {name}".encode())
    return folder


def test_export_prints_the_table_and_respects_force(
    checkpoints: dict[str, Path], mnist_dir: Path, tmp_path: Path
) -> None:
    code, out, err = _invoke(checkpoints["tiny"], "--out", tmp_path, "--data-dir", mnist_dir)
    assert (code, err) == (0, "")
    assert "max abs" in out
    assert "t10k images" in out  # the encoder was checked on the data folder's test images
    for output in ("mu", "logvar", "image", "uniform noise", "extreme"):
        assert output in out
    assert " NO" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)

    before = _snapshot(tmp_path)
    result = CliRunner().invoke(cli.app, [str(checkpoints["tiny"]), "--out", str(tmp_path)])
    expect_error(result, 2, r"already exists; pass --force \(-f\) to replace it$")
    assert _snapshot(tmp_path) == before

    code, out, err = _invoke(checkpoints["tiny"], "-o", tmp_path, "--force", "--quiet")
    assert (code, out, err) == (0, "", "")
    after = _snapshot(tmp_path)
    assert all(after[name][1] != before[name][1] for name in OUTPUTS)  # renamed into place


def test_default_out_is_the_checkpoints_folder(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(checkpoints["tiny"].read_bytes())
    code, _, err = _invoke(model, "-q")
    assert (code, err) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", *OUTPUTS])


def _no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("the export started before the problem was reported")


@pytest.mark.parametrize(
    ("make_args", "code", "expected"),
    [
        (lambda tmp: ["--out", tmp / "file.txt"], 2, "is not a folder"),
        (lambda tmp: ["--out", tmp / "file.txt" / "x"], 2, "cannot create output folder"),
        (lambda tmp: ["--opset", "9"], 2, r"opset must be in 17\.\."),
        (lambda tmp: ["--opset", str(2**80)], 2, r"opset must be in 17\.\."),
        (lambda tmp: ["--data-dir", tmp / "empty"], 1, "no t10k-images-idx3-ubyte"),
        (lambda tmp: ["--out", tmp / "in"], 2, "is the input"),
    ],
    ids=["out is a file", "below a file", "opset", "huge opset", "empty data", "onto input"],
)
def test_problems_are_reported_before_any_export_work(
    make_args: Callable[[Path], list[object]],
    code: int,
    expected: str,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "in").mkdir()
    model = tmp_path / "in" / "encoder.onnx"  # a checkpoint with a graph's name
    model.write_bytes(checkpoints["tiny"].read_bytes())
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    monkeypatch.setattr(onnx_export, "graph_bytes", _no_export)
    result = CliRunner().invoke(cli.app, [str(a) for a in (model, *make_args(tmp_path))])
    expect_error(result, code, expected)
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before


def test_a_bad_option_is_a_usage_error(checkpoints: dict[str, Path]) -> None:
    code, _, err = _invoke(checkpoints["tiny"], "--opset", "eighteen")
    assert code == 2
    assert "--opset" in err


def test_missing_torch_prints_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setattr(sys, "argv", ["vae-export", "model.pt"])
    with pytest.raises(SystemExit) as info:
        export_main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("vae-export: error: torch is not installed")
    assert "pip install" in err
    assert len(err.strip().splitlines()) == 1
