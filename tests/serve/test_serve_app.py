"""vae-serve's library side in this process: the config and its checks, which graph gets which
name, the app without its lifespan, CORS, server-side failures, large batches, the protocol's
parser on its own, and the command line up to the point where uvicorn would take over."""

from __future__ import annotations

import errno
import http.client
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from helpers import expect_error
from runtime_graphs import build_decoder, build_encoder
from serve_support import LATENT, Running, infer_json, request, thread_server, z_input
from typer.testing import CliRunner

from vae_runtime.errors import InvalidArgumentError, ModelFileError, VaeError
from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder
from vae_serve import app as serve
from vae_serve import cli as serve_cli
from vae_serve import endpoints, server
from vae_serve.app import ServeConfig, create_app
from vae_serve.codec import TensorSpec, encode_response, parse_infer
from vae_serve.models import load_models
from vae_serve.server import Listen


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (ServeConfig(), "either --onnx-dir or --decoder"),
        (ServeConfig(onnx_dir=Path("a"), decoder=Path("b")), "either --onnx-dir or --decoder"),
        (ServeConfig(onnx_dir=Path("a"), encoder=Path("b")), "--encoder goes with --decoder"),
        (ServeConfig(onnx_dir=Path("a"), precision="int4"), "precision must be one of"),
        (ServeConfig(decoder=Path("a"), precision="int8"), "picks among the graphs"),
        (ServeConfig(decoder=Path("a"), max_batch=0), "max batch must be"),
        (ServeConfig(decoder=Path("a"), max_body_bytes=10), "max body bytes must be"),
        (ServeConfig(decoder=Path("a"), max_grid=0), "max grid must be"),
        (ServeConfig(decoder=Path("a"), threads=0), "threads must be"),
    ],
)
def test_config_refusals(config: ServeConfig, words: str) -> None:
    with pytest.raises(InvalidArgumentError, match=words):
        create_app(config)


def test_config_travels_as_json(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServeConfig(
        onnx_dir=export_dir, providers=("CPUExecutionProvider",), cors_origins=("http://a",)
    )
    assert ServeConfig.from_json(config.to_json()) == config
    plain = ServeConfig(decoder=export_dir / "decoder.onnx")
    assert ServeConfig.from_json(plain.to_json()) == plain
    monkeypatch.setenv(serve.CONFIG_ENV, config.to_json())
    assert serve.worker_app().routes  # what a uvicorn worker process builds


def test_names_by_precision(export_dir: Path) -> None:
    default = load_models(ServeConfig(onnx_dir=export_dir))
    assert list(default.models) == ["decoder", "decoder_int8", "encoder", "sampler"]
    assert default.grid.precision == "fp32"
    int8 = load_models(ServeConfig(onnx_dir=export_dir, precision="int8"))
    assert list(int8.models) == ["decoder_fp32", "decoder", "encoder_fp32", "sampler"]
    assert int8.grid.precision == "int8"
    assert int8.models["decoder"].parameters["precision"] == "int8"
    assert int8.models["sampler"].parameters["precision"] == "int8"
    pair = load_models(
        ServeConfig(decoder=export_dir / "decoder.onnx", encoder=export_dir / "encoder.onnx")
    )
    assert list(pair.models) == ["decoder", "encoder", "sampler"]


def test_sampler_metadata_and_missing_graphs(export_dir: Path, tmp_path: Path) -> None:
    meta = load_models(ServeConfig(onnx_dir=export_dir)).models["sampler"].metadata()
    assert meta["platform"] == "mnist-vae_sampler"
    assert meta["inputs"][2] == {
        "name": "temperature",
        "datatype": "FP64",
        "shape": [1],
        "optional": True,
    }
    with pytest.raises(ModelFileError, match=r"no manifest\.json"):
        load_models(ServeConfig(onnx_dir=tmp_path))
    with pytest.raises(ModelFileError, match=r"lists no fp16 decoder \(decoder.fp16.onnx\)"):
        load_models(ServeConfig(onnx_dir=export_dir, precision="fp16"))


def test_pair_of_other_latent_sizes(tmp_path: Path, export_dir: Path) -> None:
    onnx.save(build_encoder(2, 8), tmp_path / "encoder.onnx")
    config = ServeConfig(decoder=export_dir / "decoder.onnx", encoder=tmp_path / "encoder.onnx")
    with pytest.raises(ModelFileError, match=r"latent size 2 but .* has 20"):
        load_models(config)


def test_not_ready_without_lifespan(export_dir: Path) -> None:
    app = create_app(ServeConfig(onnx_dir=export_dir))
    with thread_server(app, lifespan="off") as running:
        for method, path in (
            ("GET", "/v2/health/ready"),
            ("POST", "/v2/models/decoder/infer"),
            ("GET", "/samples.png"),
            ("GET", "/metrics"),
        ):
            status, _, body = request(running, method, path, b"{}")
            assert status == 503 and "not ready" in orjson.loads(body)["error"]
        assert request(running, "GET", "/v2/health/live")[0] == 200
        assert request(running, "GET", "/v2")[0] == 200


@pytest.fixture(scope="module")
def roomy(export_dir: Path) -> Any:
    """A server with the default caps and CORS for one origin."""
    config = ServeConfig(onnx_dir=export_dir, cors_origins=("http://site.example",))
    with thread_server(create_app(config)) as running:
        yield running


def test_cors(roomy: Running) -> None:
    preflight = {
        "Origin": "http://site.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Inference-Header-Content-Length",
    }
    status, headers, _ = request(roomy, "OPTIONS", "/v2/models/decoder/infer", None, preflight)
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://site.example"
    _, headers, _ = request(roomy, "GET", "/v2", None, {"Origin": "http://site.example"})
    assert "inference-header-content-length" in headers["access-control-expose-headers"].lower()
    _, headers, _ = request(roomy, "GET", "/v2", None, {"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_large_batches_run_off_the_event_loop(roomy: Running, export_dir: Path) -> None:
    z = sample_latents(endpoints.INLINE_ROWS + 36, LATENT, 3)
    status, _, body = request(roomy, "POST", "/v2/models/decoder/infer", infer_json([z_input(z)]))
    assert status == 200
    data = np.array(orjson.loads(body)["outputs"][0]["data"], np.float32)
    expected = Decoder.load(export_dir / "decoder.onnx").decode(z)
    assert data.tobytes() == expected.tobytes()
    status, _, png = request(roomy, "GET", "/samples.png?rows=10&cols=10")
    assert status == 200 and png.startswith(b"\x89PNG")


def test_chunked_body_over_the_cap(export_dir: Path) -> None:
    config = ServeConfig(onnx_dir=export_dir, max_body_bytes=4096)
    with thread_server(create_app(config)) as running:
        host, port = running.address.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v2/models/decoder/infer", body=iter([b" " * 3000] * 3))
        response = conn.getresponse()  # no Content-Length: counted as it arrives
        assert response.status == 413
        assert "above the cap of 4,096" in orjson.loads(response.read())["error"]
        conn.close()


def test_broken_graph_is_a_server_error(tmp_path: Path) -> None:
    onnx.save(build_decoder(2, 8, nan=True), tmp_path / "decoder.onnx")
    with thread_server(create_app(ServeConfig(decoder=tmp_path / "decoder.onnx"))) as running:
        status, _, body = request(
            running, "POST", "/v2/models/decoder/infer", infer_json([z_input(np.zeros((1, 2)))])
        )
        assert status == 500 and "NaN" in orjson.loads(body)["error"]
        status, _, body = request(running, "GET", "/samples.png")
        assert status == 500 and "NaN" in orjson.loads(body)["error"]
        status, _, body = request(running, "GET", "/metrics")
        assert 'vae_serve_requests_total{code="500",model="decoder"} 1.0' in body.decode()


_Z = (TensorSpec("z", "FP32", (-1, 2)),)
_IMAGE = (TensorSpec("image", "FP32", (-1, 1, 28, 28)), TensorSpec("extra", "FP32", (-1, 2)))


def _parse(request: Any, header: str | None = None, blob: bytes = b"") -> Any:
    body = request if isinstance(request, bytes) else orjson.dumps(request)
    return parse_infer(body + blob, header, _Z, _IMAGE, model="m", max_batch=4)


_GOOD_Z = {"name": "z", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"inputs": [1]}, "each of 'inputs' must be a JSON object"),
        ({"inputs": [{"datatype": "FP32"}]}, "'name' is missing or not a string"),
        ({"inputs": [{**_GOOD_Z, "parameters": []}]}, "'parameters' must be a JSON object"),
        ({"inputs": [_GOOD_Z], "outputs": {}}, "'outputs' must be a JSON array"),
        ({"inputs": [_GOOD_Z], "outputs": [1]}, "each of 'outputs' must be a JSON object"),
        ({"inputs": [{**_GOOD_Z, "data": [True, False]}]}, "must hold numbers"),
        ({"inputs": [{**_GOOD_Z, "shape": [1, True]}]}, "non-negative integers"),
    ],
)
def test_parser_refusals(content: Any, words: str) -> None:
    with pytest.raises(VaeError, match=words):
        _parse(content)


def test_parser_outputs_and_binary() -> None:
    z = np.array([[1.5, -2.0]], np.float32)
    tensor = {"name": "z", "datatype": "FP32", "shape": [1, 2]}
    head = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": 8}}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "extra"}, {"name": "image", "parameters": {"binary_data": False}}],
        }
    )
    parsed = _parse(head, f" {len(head)} ", z.tobytes())
    assert parsed.inputs["z"].tobytes() == z.tobytes()
    assert parsed.outputs == {"extra": True, "image": False}
    assert _parse({"inputs": [_GOOD_Z]}).outputs == {"image": False, "extra": False}
    body, header = encode_response("m", "7", [(_Z[0], z, True), (_IMAGE[1], z, False)])
    assert header is not None
    reply = orjson.loads(body[:header])
    assert reply["id"] == "7" and body[header:] == z.tobytes()
    assert reply["outputs"][1]["data"] == [1.5, -2.0]


def test_cli_up_to_uvicorn(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_uvicorn(
        config: ServeConfig, listen: Listen, models: Any, sock: socket.socket, *rest: Any
    ) -> str:
        seen.update(config=config, listen=listen, models=models, address=sock.getsockname())
        sock.close()
        return "stopped by SIGTERM"

    monkeypatch.setattr(server, "_run_uvicorn", fake_uvicorn)
    args = ["--onnx-dir", str(export_dir), "--port", "0", "--max-body-mb", "2"]
    args += ["--cors-origin", "http://a", "--provider", "CPUExecutionProvider", "--workers", "2"]
    result = CliRunner().invoke(serve_cli.app, args)
    assert result.exit_code == 0, result.output
    assert "serving decoder, decoder_int8, encoder, sampler at http://127.0.0.1:" in result.stdout
    assert result.stdout.endswith("stopped by SIGTERM\n")
    assert seen["config"].max_body_bytes == 2 << 20 and seen["listen"].workers == 2
    assert seen["config"].cors_origins == ("http://a",)
    assert seen["address"][0] == "127.0.0.1" and seen["address"][1] > 0


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ([], 2, "either --onnx-dir or --decoder"),
        (["--onnx-dir", "{dir}", "--log-level", "loud"], 2, "log level must be one of"),
        (["--onnx-dir", "{dir}", "--port", "70000"], 2, "port must be in 0..65,535"),
        (["--onnx-dir", "{dir}", "--max-body-mb", "0"], 2, "max body MiB must be"),
        (["--onnx-dir", "{dir}", "--drain-seconds", "-1"], 2, "drain seconds must be"),
        (["--onnx-dir", "{dir}", "--host", "x" * 64 + ".example"], 2, "is not an address"),
        (["--onnx-dir", "{dir}", "--host", "192.0.2.1"], 1, "give an address of this machine"),
        (["--onnx-dir", "{dir}", "--precision", "int8", "--workers", "x"], 2, "--workers"),
    ],
)
def test_cli_refusals(export_dir: Path, args: list[str], code: int, words: str) -> None:
    result = CliRunner().invoke(serve_cli.app, [a.format(dir=export_dir) for a in args])
    expect_error(result, code, words)


def test_cli_port_in_use_and_privileged(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--onnx-dir", str(export_dir), "--port"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        result = CliRunner().invoke(serve_cli.app, [*args, str(sock.getsockname()[1])])
        expect_error(result, 1, "Address already in use; stop what uses it")

    def refuse(self: socket.socket, address: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)  # as for anyone but root on port 80
    result = CliRunner().invoke(serve_cli.app, [*args, "80"])
    expect_error(result, 1, "Permission denied; ports below 1024 need privileges")


def test_torch_free(export_dir: Path) -> None:
    """The service loads and answers with torch unimportable, as on a runtime-only install."""
    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
from pathlib import Path
from vae_serve.app import ServeConfig, create_app
from vae_serve.models import load_models
create_app(ServeConfig(onnx_dir=Path({str(export_dir)!r})))
models = load_models(ServeConfig(onnx_dir=Path({str(export_dir)!r})))
models.models["sampler"].run({{"seed": [0], "count": [2]}})
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "vae_train", "vae_export")]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
