"""vae-serve's HTTP stack: httptools and uvloop when they import, h11 and asyncio otherwise or
with VAE_SERVE_HTTP=h11, named in uvicorn's log; a bad VAE_SERVE_HTTP is exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import BIN, Running, good_request, stop_server

from vae_runtime.errors import InvalidArgumentError
from vae_serve.server import STACK_ENV, HttpStack, http_stack


def test_the_c_stack_when_it_imports() -> None:
    assert http_stack({}) == HttpStack("httptools", "uvloop")
    assert http_stack({STACK_ENV: "auto"}) == HttpStack("httptools", "uvloop")


def test_the_pure_python_stack_when_asked_for() -> None:
    assert http_stack({STACK_ENV: " H11 "}) == HttpStack("h11", "asyncio")


@pytest.mark.parametrize("missing", ["httptools", "uvloop"])
def test_each_part_falls_back_alone(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    stack = http_stack({})
    assert (stack.http == "h11") == (missing == "httptools")
    assert (stack.loop == "asyncio") == (missing == "uvloop")


def test_a_bad_choice_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="VAE_SERVE_HTTP must be one of auto, h11"):
        http_stack({STACK_ENV: "fast"})


def test_vae_serve_refuses_a_bad_choice(export_dir: Path) -> None:
    run = subprocess.run(
        [str(BIN / "vae-serve"), "--onnx-dir", str(export_dir), "--port", "0"],
        env={"PATH": "/usr/bin:/bin", STACK_ENV: "fast"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "VAE_SERVE_HTTP" in run.stderr


@pytest.mark.parametrize(
    ("choice", "named"), [("h11", "h11 parser, asyncio"), ("auto", "httptools")]
)
def test_vae_serve_names_its_stack_and_serves(export_dir: Path, choice: str, named: str) -> None:
    command = [str(BIN / "vae-serve"), "--onnx-dir", str(export_dir), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--log-level", "info"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, STACK_ENV: choice},
    )
    running = Running(process.stdout.readline().split("http://")[1].split()[0], process)  # type: ignore[union-attr]
    try:
        good_request(running)
    finally:
        code, _, err = stop_server(running)
    assert code == 0, err
    assert f"HTTP stack: {named}" in err
