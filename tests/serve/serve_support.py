"""What vae-serve's tests share (conftest.py holds the fixtures): the server started for real,
in a subprocess or in a thread of this process, and plain HTTP requests as curl sends them."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
import tritonclient.http as triton

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_graphs, shared
from runtime_graphs import quantize

from vae_runtime.sampling import sample_latents

BIN = Path(sys.executable).parent
LATENT = 20
MAX_BATCH = 64  # the servers' --max-batch: small, so the cap is cheap to pass
MAX_BODY_MB = 1


def int8_copy(source: Path, target: Path) -> None:
    """An int8 graph as `vae-export --precision int8` would write one (runtime_graphs.quantize)."""
    quantize(onnx.load(source), target)


@dataclass
class Running:
    """A vae-serve started by a test: its URL ("127.0.0.1:port"), its process (None for
    the in-process server) and, with --grpc-port, its gRPC address."""

    address: str
    process: subprocess.Popen[str] | None = None
    grpc: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def start_server(*args: object, env: dict[str, str] | None = None) -> Running:
    """`vae-serve ARGS --port 0` in a subprocess, once it has printed its address."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VAE_DEBUG", None)
    process = subprocess.Popen(
        [str(BIN / "vae-serve"), *map(str, args), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,  # its own group: a stop that hangs takes its workers with it
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once the socket listens
    if "serving" not in line:
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"vae-serve did not start: {line}{err}")
    address = line.split("http://")[1].split()[0]
    grpc = line.split("gRPC at ")[1].split()[0] if "gRPC at " in line else None
    return Running(address, process, grpc)


def stop_server(running: Running, timeout: float = 30) -> tuple[int, str, str]:
    """SIGTERM, then (exit code, rest of stdout, stderr). A server still running after
    `timeout` is killed with its workers, and the test fails with what it printed."""
    assert running.process is not None
    running.process.send_signal(signal.SIGTERM)
    try:
        out, err = running.process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(running.process.pid, signal.SIGKILL)
        out, err = running.process.communicate(timeout=30)
        pytest.fail(
            f"vae-serve did not stop {timeout:g} s after SIGTERM:\n{out[-2000:]}{err[-4000:]}"
        )
    return running.process.returncode, out, err


@contextlib.contextmanager
def thread_server(app: Any, lifespan: str = "on") -> Iterator[Running]:
    """`app` under uvicorn in a thread of this process, on a free port, stopped at the end."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not uv.started:  # the lifespan has loaded the graphs, the socket listens
            assert thread.is_alive(), "the in-process server did not start"
            time.sleep(0.01)
        yield Running(f"127.0.0.1:{sock.getsockname()[1]}")
    finally:
        uv.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


def request(
    server: Running,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request as curl sends it (no Content-Type unless given): status, headers, body."""
    host, port = server.address.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def infer_json(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    """An inference request body, all JSON."""
    return orjson.dumps({"inputs": inputs, **extra})


def z_input(z: np.ndarray) -> dict[str, Any]:
    return {"name": "z", "datatype": "FP32", "shape": list(z.shape), "data": z.ravel().tolist()}


def good_request(server: Running) -> None:
    """A decode that must succeed whatever came before."""
    z = sample_latents(2, LATENT, 0)
    status, _, body = request(server, "POST", "/v2/models/decoder/infer", infer_json([z_input(z)]))
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["shape"] == [2, 1, 28, 28]


def client(server: Running) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address, connection_timeout=30, network_timeout=30)
