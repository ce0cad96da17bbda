"""`vae-export` as a user runs it: the table, --force, --quiet, and every bad input in one line."""

from __future__ import annotations

import dataclasses
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vae_export import cli, onnx_export
from vae_runtime.contract import DECODER_FILE, ENCODER_FILE, MANIFEST_FILE
from vae_train.checkpoint import CHECKPOINT_VERSION, load_checkpoint

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
    code, out, err = _invoke(checkpoints["tiny"], "--out-dir", tmp_path, "--data-dir", mnist_dir)
    assert (code, err) == (0, "")
    assert "max abs" in out
    assert "t10k images" in out  # the encoder was checked on the data folder's test images
    for output in ("mu", "logvar", "image", "uniform noise", "extreme"):
        assert output in out
    assert " NO" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUTS)

    before = _snapshot(tmp_path)
    code, out, err = _invoke(checkpoints["tiny"], "--out-dir", tmp_path)
    assert code == 1
    assert "already" in err
    assert "--force" in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before

    code, out, err = _invoke(checkpoints["tiny"], "-o", tmp_path, "--force", "--quiet")
    assert (code, out, err) == (0, "", "")
    after = _snapshot(tmp_path)
    assert all(after[name][1] != before[name][1] for name in OUTPUTS)  # renamed into place


def test_default_out_dir_is_the_checkpoints_folder(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(checkpoints["tiny"].read_bytes())
    code, _, err = _invoke(model, "-q")
    assert (code, err) == (0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", *OUTPUTS])


def _write_bad(kind: str, path: Path, good: Path) -> None:
    """Write a broken model.pt of the given kind at `path`."""
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not a zip":
        path.write_text("hello, I am a text file\n")
    elif kind == "zip of something else":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a checkpoint")
    elif kind == "newer version":
        payload = torch.load(good, weights_only=True)
        payload["format_version"] = CHECKPOINT_VERSION + 1
        torch.save(payload, path)
    elif kind == "pickled object":
        payload = torch.load(good, weights_only=True)
        payload["run"] = {"settings": Opaque()}
        torch.save(payload, path)
    elif kind == "shapes":
        payload = torch.load(good, weights_only=True)
        payload["config"] = {"hidden_dim": 400, "latent_dim": 20}  # weights are 64/8
        torch.save(payload, path)
    # "missing": write nothing


BAD = {
    "missing": "no such file",
    "folder": "folder",
    "empty": "empty",
    "truncated": "truncated",
    "not a zip": "not a PyTorch checkpoint",
    "zip of something else": "checkpoint",
    "newer version": "newer",
    "pickled object": "pickled",
    "shapes": "do not fit",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_checkpoint_is_one_line_and_touches_nothing(
    kind: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "in" / "model.pt"
    path.parent.mkdir()
    _write_bad(kind, path, checkpoints["tiny"])
    out_dir = _old_outputs(tmp_path / "out")
    before = _snapshot(out_dir)
    code, out, err = _invoke(path, "--out-dir", out_dir, "--force")
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "error:" in err
    assert str(path) in err
    assert BAD[kind] in err
    assert "Traceback" not in err
    assert "enforce fail" not in err  # torch's C++ error prefix is not for users
    assert _snapshot(out_dir) == before


def _no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("the export started before the problem was reported")


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda tmp: ["--out-dir", tmp / "nowhere"], "does not exist"),
        (lambda tmp: ["--out-dir", tmp / "file.txt"], "not a folder"),
        (lambda tmp: ["--opset", "9"], "opset must be in"),
        (lambda tmp: ["--data-dir", tmp / "empty"], "no t10k-images-idx3-ubyte"),
    ],
    ids=["missing out-dir", "out-dir is a file", "opset", "empty data folder"],
)
def test_problems_are_reported_before_any_export_work(
    make_args: Callable[[Path], list[object]],
    expected: str,
    checkpoints: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(onnx_export, "_export_graph", _no_export)
    code, _, err = _invoke(checkpoints["tiny"], *make_args(tmp_path))
    assert code == 1
    assert expected in err
    assert len(err.strip().splitlines()) == 1


def test_a_bad_option_is_a_usage_error(checkpoints: dict[str, Path]) -> None:
    code, _, err = _invoke(checkpoints["tiny"], "--opset", "eighteen")
    assert code == 2
    assert "--opset" in err


def test_missing_torch_prints_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("vae-export: error: torch is not installed")
    assert "pip install" in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_loader_used_by_the_cli_accepts_the_fixture(
    checkpoints: dict[str, Path],
) -> None:
    # Guards the bad-input tests: their "good" source really is a loadable checkpoint.
    assert load_checkpoint(checkpoints["tiny"]).config.latent_dim == 8
