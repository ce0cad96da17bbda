"""README.md cannot drift: every shell command it shows (```sh blocks) and every Python block runs,
in order, as shown, in a temporary folder on tiny data; only the commands listed in SKIPPED (with
their reason) are not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_mnist_dir

README = Path(__file__).resolve().parent.parent / "README.md"
BIN = Path(sys.executable).parent
SKIPPED = {  # command prefix: why a test cannot run it
    "make ": "installs into .venv and runs the whole suite or the demo; CI runs `make test`",
    "python3 -m venv": "creates a virtualenv; the suite runs inside one already",
    ".venv/bin/pip install": "installs packages: no network in tests",
    ".venv/bin/pytest": "the suite itself",
}


def blocks(language: str) -> list[str]:
    """The contents of README's fenced blocks of `language`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def shell_commands() -> list[str]:
    """Every command line of the ```sh blocks: comments (`  # ...`) dropped, `\\` lines joined."""
    commands = []
    for block in blocks("sh"):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"(^|\s)#.*$", "", line).strip()
            if command:
                commands.append(command)
    return commands


def test_the_readme_shows_commands_to_run() -> None:  # the test below cannot pass empty
    commands = shell_commands()
    assert len(commands) >= 15
    assert any(c.startswith("vae-train") for c in commands)
    assert len(blocks("python")) >= 1


def test_every_readme_command_runs_as_shown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data = write_mnist_dir(tmp_path / "mnist", 512, 128)
    write_mnist_dir(home / "data" / "mnist", 256, 64)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VAE_DATA_DIR", "VAE_DEBUG")},
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    ran = 0
    for command in shell_commands():
        command = command.replace("/path/to/mnist", str(data))
        if any(command.startswith(prefix) for prefix in SKIPPED):
            continue
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            env[name] = value
            continue
        done = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        ran += 1
    for block in blocks("python"):
        code = block.replace("/path/to/mnist", str(data))
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{code}\n{done.stderr}"
        ran += 1
    assert ran >= 15
    assert (work / "out" / "generated.png").is_file()
    assert (work / "manifold.png").is_file()


@pytest.mark.parametrize("prefix", sorted(SKIPPED))
def test_every_skipped_command_is_still_in_the_readme(prefix: str) -> None:
    assert any(c.startswith(prefix) for c in shell_commands()), f"{prefix!r}: drop it from SKIPPED"
