"""`vae-train` as a user meets it: a tiny run, exit codes, one-line errors, no torch, no network."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner, Result

from vae_train.cli import INSTALL_HINT, app
from vae_train.data import DATA_DIR_ENV, DEFAULT_MIRRORS

TINY = ["--hidden-dim", "16", "--latent-dim", "2", "--batch-size", "128", "--device", "cpu"]
train_module = importlib.import_module("vae_train.training")


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="vae-train")


def _one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vae-train: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_tiny_run_writes_everything(tmp_path: Path, mnist_dir: Path) -> None:
    result = invoke("--epochs", 2, *TINY, "--data-dir", mnist_dir, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    for name in ("model.pt", "metrics.jsonl", "samples.png", "reconstructions.png"):
        assert (tmp_path / name).is_file()
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 2
    assert "epoch   2/2" in epoch_lines[1]
    assert "test" in epoch_lines[1]
    assert "bce" in epoch_lines[1]
    assert "kl" in epoch_lines[1]
    assert epoch_lines[1].endswith(" s")


def test_quiet_prints_nothing_and_resume_continues(tmp_path: Path, mnist_dir: Path) -> None:
    first = invoke("--epochs", 1, *TINY, "--data-dir", mnist_dir, "--out", tmp_path, "-q")
    assert first.exit_code == 0, first.output
    assert first.output == ""
    model = tmp_path / "model.pt"
    again = invoke(
        "--epochs", 2, *TINY, "--data-dir", mnist_dir, "--out", tmp_path, "--resume", model, "-q"
    )
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_data_dir_from_environment(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    result = invoke("--epochs", 1, *TINY, "--out", tmp_path, "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--device", "gpu"], "auto, cpu, cuda, cuda:N, mps"),
        (["--latent-dim", "0"], "--latent-dim"),
        (["--seed", "-2"], "--seed"),
        (["--bogus"], "--bogus"),
    ],
)
def test_nonsense_options_are_usage_errors(args: list[str], needle: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert needle in _one_error_line(result)


def test_missing_output_folder_is_created(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "runs" / "a"
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file()


def test_output_folder_that_cannot_be_made(tmp_path: Path, mnist_dir: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", tmp_path / "a-file" / "run")
    assert result.exit_code == 1
    assert "cannot create output folder" in _one_error_line(result)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"PK\x03\x04 cut short", "not a PyTorch checkpoint"),
        (b"\x80\x04K\x01.", "not a PyTorch checkpoint"),
    ],
)
def test_bad_resume_file_is_one_line(
    tmp_path: Path, mnist_dir: Path, content: bytes | None, needle: str
) -> None:
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", tmp_path, "--resume", path)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert str(path) in line
    assert needle in line


def test_tampered_resume_file_is_refused(tmp_path: Path, mnist_dir: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"format": "mnist-vae/checkpoint", "run": Path("x")}, path)  # a pickled object
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", tmp_path, "--resume", path)
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "pickled Python objects" in line
    assert "weights_only" not in line


def test_no_network_and_no_data_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)  # no test touches the network
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = invoke(*TINY, "--out", tmp_path)
    assert result.exit_code == 1
    line = _one_error_line(result)
    for mirror in DEFAULT_MIRRORS:
        assert mirror in line
    assert "Network is unreachable" in line
    assert "--data-dir" in line
    assert DATA_DIR_ENV in line
    assert not list((tmp_path / "cache").rglob("*.gz"))


def test_interrupt_exits_130_with_a_resume_hint(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def evaluate(self: Any, epoch: int) -> tuple[float, float]:
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module._Run, "_evaluate", evaluate)
    result = invoke("--epochs", 3, *TINY, "--data-dir", mnist_dir, "--out", tmp_path, "-q")
    assert result.exit_code == 130
    assert "--resume" in result.stderr
    assert (tmp_path / "model.pt").is_file()


def test_without_torch_says_how_to_install() -> None:
    script = textwrap.dedent(
        """
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
                return None

        sys.meta_path.insert(0, NoTorch())
        sys.argv = ["vae-train", "--epochs", "1"]
        from vae_train.cli import main
        main()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert INSTALL_HINT in lines[0]
    assert "torch==2.13.0" in INSTALL_HINT


def test_existing_model_is_kept_unless_forced_or_resumed(tmp_path: Path, mnist_dir: Path) -> None:
    base = [*TINY, "--data-dir", mnist_dir, "--out", tmp_path, "-q"]
    assert invoke(*base, "--epochs", "1").exit_code == 0
    model = tmp_path / "model.pt"
    before = model.read_bytes()
    refused = invoke(*base, "--epochs", "1", "--seed", "7")
    assert refused.exit_code == 1
    assert "already exists" in _one_error_line(refused)
    assert model.read_bytes() == before
    assert invoke(*base, "--epochs", "2", "--resume", model).exit_code == 0  # resuming it: fine
    assert invoke(*base, "--epochs", "1", "--seed", "7", "--force").exit_code == 0
    assert model.read_bytes() != before
