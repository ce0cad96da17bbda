"""The convention the nine commands share, checked on each: an existing output is replaced only
with --force (else one line naming the file and the flag, exit 2, nothing changed), a folder or a
FIFO at an output path is refused even with --force, --help says what the command writes, and
-q prints nothing on success."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from helpers import expect_error
from typer.testing import CliRunner

from vae_export import cli as export_cli
from vae_runtime import cli as runtime_cli
from vae_serve import cli as serve_cli
from vae_serve import server
from vae_train import cli as train_cli
from vae_web import cli as web_cli

runner = CliRunner()
OLD = b"someone's precious file\n"


@dataclass(frozen=True)
class Command:
    """One command: its app, the arguments of a small run (given the session's files), the
    output the checks put things at (relative to the current folder), and what --help names."""

    name: str
    app: typer.Typer
    args: Callable[[dict[str, Path]], list[Any]]
    target: str
    writes: tuple[str, ...]


_TRAIN = ["--epochs", "1", "--hidden-dim", "16", "--latent-dim", "2", "--batch-size", "64"]
COMMANDS = [
    Command(
        "vae-generate",
        runtime_cli.generate_app,
        lambda f: ["--onnx", f["decoder"]],
        "samples.png",
        ("samples.png", "--npy"),
    ),
    Command(
        "vae-interpolate",
        runtime_cli.interpolate_app,
        lambda f: ["--onnx", f["decoder"]],
        "interpolation.gif",
        ("interpolation.png", "interpolation.gif"),
    ),
    Command(
        "vae-reconstruct",
        runtime_cli.reconstruct_app,
        lambda f: ["--encoder", f["encoder"], "--decoder", f["decoder"], f["images"]],
        "reconstructions.png",
        ("reconstructions.png",),
    ),
    Command(
        "vae-score",
        runtime_cli.score_app,
        lambda f: [f["images"], "--onnx-dir", f["export"], "-k", "2", "-n", "8"],
        "scores.csv",
        ("scores.csv",),
    ),
    Command(
        "vae-train",
        train_cli.app,
        lambda f: [*_TRAIN, "--data-dir", f["data"], "--out", "."],
        "loss.png",  # not only model.pt: every file of the set
        ("model.pt", "metrics.jsonl", "samples.png"),
    ),
    Command(
        "vae-eval",
        train_cli.eval_app,
        lambda f: [f["model"], "--data-dir", f["data"], "-k", "2", "-n", "8", "-o", "e.json"],
        "e_kl.png",
        ("eval.json", "eval_kl.png"),
    ),
    Command(
        "vae-export",
        export_cli.app,
        lambda f: [f["model"], "--out", "."],
        "decoder.onnx",
        ("encoder.onnx", "decoder.onnx", "manifest.json"),
    ),
    Command(
        "vae-serve",
        serve_cli.app,
        lambda f: ["--onnx-dir", f["export"], "--write-serve-config", "serve.yaml"],
        "serve.yaml",
        ("--write-serve-config",),
    ),
    Command(
        "vae-web",
        web_cli.app,
        lambda f: ["--onnx-dir", f["export"]],
        "site/index.html",
        ("site", "model.json"),
    ),
]
IDS = [c.name for c in COMMANDS]


def invoke(app: typer.Typer, args: list[Any]) -> Any:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict[str, Path]:
    """A model trained for one epoch on the small MNIST and its export, in a folder of their
    own (the commands run elsewhere)."""
    folder = tmp_path_factory.mktemp("made")
    trained = invoke(train_cli.app, [*_TRAIN, "--data-dir", mnist_dir, "--out", folder, "-q"])
    assert trained.exit_code == 0, trained.output
    exported = invoke(export_cli.app, [folder / "model.pt", "--out", folder / "export", "-q"])
    assert exported.exit_code == 0, exported.output
    return {
        "data": mnist_dir,
        "images": next(mnist_dir.glob("t10k-images*")),
        "model": folder / "model.pt",
        "export": folder / "export",
        "encoder": folder / "export" / "encoder.onnx",
        "decoder": folder / "export" / "decoder.onnx",
    }


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(result: Any, command: Command, kind: str = "") -> None:
    where = re.escape(command.target)
    if kind:
        words = rf"{where} already exists and is {kind}; .*even with --force \(-f\)"
    else:
        words = (
            rf"^{command.name}: error: {where} already exists; pass --force \(-f\) to replace it$"
        )
    expect_error(result, 2, words)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_an_existing_output_is_replaced_only_with_force(
    command: Command, files: dict[str, Path], work: Path
) -> None:
    target = work / command.target
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(OLD)
    args = command.args(files)
    result = runner.invoke(command.app, [str(a) for a in args], prog_name=command.name)
    _refused(result, command)
    assert target.read_bytes() == OLD  # byte for byte
    assert sorted(p.name for p in work.rglob("*")) == sorted(
        [target.name] + ([target.parent.name] if target.parent != work else [])
    )  # and nothing else was written

    forced = invoke(command.app, [*args, "--force", "-q"])
    assert forced.exit_code == 0, forced.output
    assert target.is_file() and target.read_bytes() != OLD


@pytest.mark.parametrize("kind", ["a folder", "a FIFO"])
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_a_folder_or_fifo_at_an_output_path_is_refused_even_with_force(
    command: Command, kind: str, files: dict[str, Path], work: Path
) -> None:
    target = work / command.target
    target.parent.mkdir(exist_ok=True)
    if kind == "a folder":
        target.mkdir()
        (target / "inside").write_bytes(OLD)
    else:
        os.mkfifo(target)
    for extra in ([], ["--force"]):
        args = [*command.args(files), *extra]
        result = runner.invoke(command.app, [str(a) for a in args], prog_name=command.name)
        _refused(result, command, kind)
    if kind == "a folder":
        assert [p.name for p in target.iterdir()] == ["inside"]
    else:
        assert target.is_fifo()


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_help_says_what_the_command_writes(command: Command) -> None:
    result = invoke(command.app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    writes = text[text.index("Writes:") :]
    for name in command.writes:
        assert name in writes, (name, writes)
    for option in ("-f, --force", "-q, --quiet"):
        assert option in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_quiet_prints_nothing_on_success(
    command: Command, files: dict[str, Path], work: Path
) -> None:
    result = invoke(command.app, [*command.args(files), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    assert (work / command.target).is_file()


def test_serve_quiet_prints_nothing(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_uvicorn(config: Any, listen: Any, models: Any, sock: socket.socket, *rest: Any) -> str:
        seen["level"] = listen.log_level
        sock.close()
        return "stopped by SIGTERM"

    monkeypatch.setattr(server, "_run_uvicorn", fake_uvicorn)
    result = invoke(serve_cli.app, ["--onnx-dir", files["export"], "--port", "0", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and seen["level"] == "error"


def test_the_same_options_mean_the_same_thing_everywhere() -> None:
    """-o/--out for the output, -q/--quiet, -f/--force: spelt alike in every command's help."""
    for command in COMMANDS:
        text = invoke(command.app, ["--help"]).stdout
        if command.name != "vae-serve":  # its one output is --write-serve-config's FILE
            assert "-o, --out" in text, command.name
        assert "--out-dir" not in text, command.name
