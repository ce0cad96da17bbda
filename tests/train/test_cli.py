"""`vae-train` as a user meets it: a tiny run, exit codes, one-line errors, no torch, no network."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import expect_error, expect_interrupted
from typer.testing import CliRunner, Result

from vae_train.__main__ import INSTALL_HINT
from vae_train.cli import THREAD_TUNING, app
from vae_train.data import DATA_DIR_ENV, DEFAULT_MIRRORS

TINY = ["--hidden-dim", "16", "--latent-dim", "2", "--batch-size", "128", "--device", "cpu"]
train_module = importlib.import_module("vae_train.training")


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="vae-train")


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
        (["--epochs", "0"], r"epochs must be in 1\.\.10,000, got 0"),
        (["--epochs", str(2**70)], r"epochs must be in 1\.\.10,000"),
        (["--batch-size", "-1"], r"batch_size must be in 1\.\.65,536"),
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "nan"], r"lr must be a finite number in 0\.\.10"),
        (["--lr", "1e300"], r"lr must be a finite number in 0\.\.10"),
        (["--device", "gpu"], "auto, cpu, cuda, cuda:N, mps"),
        (["--latent-dim", "0"], r"latent_dim must be in 1\.\.4,096"),
        (["--hidden-dim", str(10**9)], r"hidden_dim must be in 1\.\.16,384"),
        (["--seed", "-2"], r"seed must be in 0\.\."),
        (["--epochs", "x"], "Invalid value for '--epochs'"),
        (["--bogus"], "--bogus"),
    ],
)
def test_nonsense_options_are_usage_errors(args: list[str], needle: str) -> None:
    result = invoke(*args)
    expect_error(result, 2, needle)


def test_missing_output_folder_is_created(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "runs" / "a"
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.pt").is_file()


def test_output_folder_that_cannot_be_made(tmp_path: Path, mnist_dir: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result = invoke(*TINY, "--data-dir", mnist_dir, "--out", tmp_path / "a-file" / "run")
    expect_error(result, 2, "cannot create output folder")


def test_no_network_and_no_data_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)  # no test touches the network
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = invoke(*TINY, "--out", tmp_path)
    line = expect_error(result, 1)
    for mirror in DEFAULT_MIRRORS:
        assert mirror in line
    assert "Network is unreachable" in line
    assert "--data-dir" in line
    assert DATA_DIR_ENV in line
    assert not list((tmp_path / "cache").rglob("*.gz"))


def test_interrupt_exits_130_with_a_resume_hint(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = train_module._Run._evaluate

    def evaluate(self: Any, epoch: int) -> tuple[float, float]:
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(train_module._Run, "_evaluate", evaluate)
    result = invoke("--epochs", 3, *TINY, "--data-dir", mnist_dir, "--out", tmp_path, "-q")
    line = expect_interrupted(result, 130)
    assert line.endswith(f"holds 1 finished epoch(s); continue with --resume {tmp_path}/model.pt")


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
        from vae_train.__main__ import main
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
    expect_error(refused, 2, "already exists")
    assert model.read_bytes() == before
    assert invoke(*base, "--epochs", "2", "--resume", model).exit_code == 0  # resuming it: fine
    assert invoke(*base, "--epochs", "1", "--seed", "7", "--force").exit_code == 0
    assert model.read_bytes() != before


@pytest.mark.parametrize(
    ("args", "env", "bound"),
    [
        ([], {}, True),
        (["--no-tune-threads"], {}, False),
        ([], {"VAE_TUNE_THREADS": "0"}, False),
        (["--tune-threads"], {"VAE_TUNE_THREADS": "0"}, True),
    ],
)
def test_thread_binding_is_one_visible_setting(
    tmp_path: Path,
    mnist_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    bound: bool,
) -> None:
    for name in THREAD_TUNING:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = invoke(*TINY, "--epochs", 1, "--data-dir", mnist_dir, "--out", tmp_path, "-q", *args)
    assert result.exit_code == 0, result.output
    for name, value in THREAD_TUNING.items():
        assert os.environ.get(name) == (value if bound else None)


def test_the_users_own_binding_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_train.cli import tune_threads

    monkeypatch.setenv("OMP_PROC_BIND", "spread")
    monkeypatch.delenv("OMP_PLACES", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    tune_threads(True)
    assert os.environ["OMP_PROC_BIND"] == "spread"
    assert os.environ["OMP_PLACES"] == "cores"
    assert os.environ["GOMP_SPINCOUNT"] == "10000"
