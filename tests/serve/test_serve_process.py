"""vae-serve as a process: SIGTERM drains the requests in flight and exits 0, bad graphs and a
busy port are refused in one line before anything is served, uvicorn workers, the missing
extra's hint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import expect_error
from serve_support import (
    BIN,
    LATENT,
    good_request,
    infer_json,
    request,
    start_server,
    stop_server,
    z_input,
)

from vae_runtime.sampling import sample_latents


def run_serve(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VAE_DEBUG"}
    return subprocess.run(
        [str(BIN / "vae-serve"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def busy_port() -> object:
    """A port this test listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_sigterm_drains_requests_in_flight(export_dir: Path) -> None:
    running = start_server("--onnx-dir", export_dir)
    host, port = running.address.split(":")
    body = infer_json([z_input(sample_latents(3, LATENT, 0))])
    head = (
        f"POST /v2/models/decoder/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body[:10])  # in flight: the server waits for the rest
        time.sleep(0.3)
        running.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no new connections while draining
            socket.create_connection((host, int(port)), timeout=5).close()
        assert running.process.poll() is None  # type: ignore[union-attr]
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", reply[:200]
    payload = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert payload["outputs"][0]["shape"] == [3, 1, 28, 28]
    code, out, err = stop_server(running)  # a second SIGTERM, to a process already leaving
    assert code == 0, err
    assert "stopped by SIGTERM" in out
    assert "Traceback" not in err


def test_sigint_stops_idle_server(export_dir: Path) -> None:
    running = start_server("--onnx-dir", export_dir)
    good_request(running)
    running.process.send_signal(signal.SIGINT)  # type: ignore[union-attr]
    out, err = running.process.communicate(timeout=30)  # type: ignore[union-attr]
    assert running.process.returncode == 0, err  # type: ignore[union-attr]
    assert "stopped by SIGINT" in out and "Traceback" not in err


def test_workers(export_dir: Path) -> None:
    running = start_server("--onnx-dir", export_dir, "--workers", "2")
    for _ in range(6):  # spread over both workers by the kernel
        good_request(running)
    status, _, body = request(running, "GET", "/samples.png?rows=2&cols=2")
    assert status == 200 and body.startswith(b"\x89PNG")
    code, out, err = stop_server(running)
    assert code == 0, err
    assert "stopped by SIGTERM" in out


def test_bad_graph_refused_before_binding(export_dir: Path, tmp_path: Path, busy_port: int) -> None:
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    with (folder / "decoder.int8.onnx").open("ab") as f:
        f.write(b"\0")
    # The port is taken too: the graph's error comes first, so the graphs were checked first.
    result = run_serve("--onnx-dir", folder, "--port", busy_port)
    expect_error(result, 1, r"decoder\.int8\.onnx: SHA-256 .* does not match")
    assert "INFO" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--decoder", "{dir}/encoder.onnx"], 1, "is an mnist-vae encoder graph"),
        (["--decoder", "{dir}/manifest.json"], 1, "not listed in"),
        (["--onnx-dir", "{dir}/nowhere"], 1, "no manifest.json"),
        (["--onnx-dir", "{dir}", "--precision", "fp16"], 1, "lists no fp16 decoder"),
        (["--onnx-dir", "{dir}", "--workers", "0"], 2, "workers must be in 1..64"),
        (["--onnx-dir", "{dir}", "--host", "x" * 64 + ".example"], 2, "--host"),
    ],
)
def test_refusals(export_dir: Path, args: list[str], code: int, words: str) -> None:
    result = run_serve(*(a.format(dir=export_dir) for a in args), "--port", "0")
    expect_error(result, code, words)


def test_port_in_use_is_one_line(export_dir: Path, busy_port: int) -> None:
    result = run_serve("--onnx-dir", export_dir, "--port", busy_port)
    expect_error(result, 1, f"cannot listen on 127.0.0.1:{busy_port}: Address already in use")


def test_without_the_extra_one_line() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; sys.argv = ['vae-serve']; "
        "from vae_serve.__main__ import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    line = expect_error(result, 1, "uvicorn is not installed")
    assert "pip install 'mnist-vae[serve]'" in line
