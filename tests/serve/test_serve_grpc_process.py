"""The life of vae-serve's gRPC front: the refusals of --grpc-port at start, SIGTERM in the
middle of a stream of calls, and explicit model control (unload, load) through tritonclient.grpc.
The calls themselves are test_serve_grpc.py's."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from serve_support import BIN, LATENT, start_server, stop_server, thread_server
from test_serve_grpc import client, good_call, stub_call, z_tensor
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from vae_runtime.sampling import sample_latents


def test_explicit_unload_and_load_over_grpc(export_dir: Path) -> None:
    """Under --model-control explicit, tritonclient.grpc's unload_model and load_model move a
    model out of service and back, as the HTTP repository calls do."""
    from vae_serve.app import ServeConfig, create_app
    from vae_serve.grpc_server import app_state, bind

    app = create_app(ServeConfig(onnx_dir=export_dir, model_control="explicit"))
    front = bind("127.0.0.1", 0, max_message_bytes=1 << 20, threads=2)
    with thread_server(app) as server:
        front.start(app_state(app))
        server.grpc = f"127.0.0.1:{front.port}"
        c = client(server)
        c.unload_model("encoder")
        assert not c.is_model_ready("encoder") and c.is_model_ready("decoder")
        index = {m.name: m.state for m in c.get_model_repository_index().models}
        assert index["encoder"] == "UNAVAILABLE" and index["decoder"] == "READY"
        only_ready = stub_call(server, "RepositoryIndex", pb.RepositoryIndexRequest(ready=True))
        ready = [m.name for m in only_ready.models]
        assert "encoder" not in ready
        with pytest.raises(InferenceServerException, match="unknown model 'encoder'"):
            c.infer("encoder", [z_tensor(np.zeros((1, 1, 28, 28), np.float32), name="image")])
        c.load_model("encoder")
        assert c.is_model_ready("encoder")
        good_call(server)
        assert front.stop(5).wait(10)


def test_grpc_port_refusals(export_dir: Path) -> None:
    """One line and exit 2 for --grpc-port with --workers or out of range; exit 1 for a
    port in use."""
    cmd = [str(BIN / "vae-serve"), "--onnx-dir", str(export_dir), "--port", "0"]
    for extra, code, line in (
        (["--grpc-port", "0", "--workers", "2"], 2, "--grpc-port serves from one process"),
        (["--grpc-port", "70000"], 2, "grpc port"),
    ):
        done = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        assert line in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([*cmd, "--grpc-port", port], capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} for gRPC" in done.stderr.decode()


def test_sigterm_drains_grpc_calls(export_dir: Path) -> None:
    """SIGTERM in the middle of 4 clients' streams of gRPC calls: every call is answered or, once
    the server stops taking calls, refused as UNAVAILABLE (never cut off), and vae-serve exits 0
    with its stop line."""
    server = start_server("--onnx-dir", export_dir, "--grpc-port", 0)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    z = sample_latents(64, LATENT, 1)

    def stream() -> None:
        c = client(server)
        while True:
            try:
                c.infer("decoder", [z_tensor(z)])
                status = "answered"
            except InferenceServerException as exc:
                status = str(exc.status())
            with lock:
                outcomes[status] += 1
            if status != "answered":
                return

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while outcomes["answered"] < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    code, out, err = stop_server(server)
    for thread in threads:
        thread.join(30)
    assert code == 0, err
    assert "stopped by SIGTERM" in out
    assert outcomes["answered"] >= 40
    assert set(outcomes) <= {"answered", "StatusCode.UNAVAILABLE"}, outcomes
