"""vae-serve over real HTTP: tritonclient (a client that is not ours) in every combination of
JSON and binary tensors, curl-style requests, /samples.png against vae-generate's file, and every
kind of bad request, each followed by a good one that must succeed. Each test runs against the
server in a subprocess and against the same app in a thread of this process (fixture `server`)."""

from __future__ import annotations

import gzip
import itertools
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from serve_support import (
    BIN,
    LATENT,
    MAX_BATCH,
    MAX_BODY_MB,
    Running,
    client,
    good_request,
    infer_json,
    request,
)
from tritonclient.utils import InferenceServerException

from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder, Encoder

SEED, ROWS, COLS, TEMPERATURE = 7, 3, 4, 0.8  # a grid vae-generate draws once


@pytest.fixture(scope="module")
def graphs(export_dir: Path) -> dict[str, Decoder | Encoder]:
    """The graphs in this process, loaded as the runtime loads them."""
    return {
        "decoder": Decoder.load(export_dir / "decoder.onnx"),
        "decoder_int8": Decoder.load(export_dir / "decoder.int8.onnx"),
        "encoder": Encoder.load(export_dir / "encoder.onnx"),
    }


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), list(itertools.product([True, False], repeat=2))
)
def test_tritonclient_decoder(
    server: Running, graphs: dict[str, Any], binary_in: bool, binary_out: bool
) -> None:
    z = sample_latents(25, LATENT, 11, temperature=1.5)
    given = triton.InferInput("z", list(z.shape), "FP32")
    given.set_data_from_numpy(z, binary_data=binary_in)
    wanted = triton.InferRequestedOutput("image", binary_data=binary_out)
    result = client(server).infer("decoder", [given], outputs=[wanted], request_id="r1")
    images = result.as_numpy("image")
    expected = graphs["decoder"].decode(z)
    assert images.dtype == np.float32 and images.shape == (25, 1, 28, 28)
    # Bit for bit: binary is the bytes themselves, JSON carries float32's shortest exact form.
    assert images.tobytes() == expected.tobytes()
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_tritonclient_compressed_request(
    server: Running, graphs: dict[str, Any], compression: str
) -> None:
    z = sample_latents(25, LATENT, 12)
    given = triton.InferInput("z", list(z.shape), "FP32")
    given.set_data_from_numpy(z, binary_data=compression == "gzip")
    result = client(server).infer(
        "decoder",
        [given],
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,  # asked for; an uncompressed reply is fine
    )
    assert result.as_numpy("image").tobytes() == graphs["decoder"].decode(z).tobytes()


def test_tritonclient_metadata_and_health(server: Running, export_dir: Path) -> None:
    c = client(server)
    assert c.is_server_live() and c.is_server_ready()
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    for name in ("decoder", "encoder", "sampler", "decoder_int8"):
        assert c.is_model_ready(name), name
    assert not c.is_model_ready("nope")
    meta = c.get_model_metadata("decoder")
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}]
    assert meta["outputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    manifest = orjson.loads((export_dir / "manifest.json").read_bytes())
    assert meta["parameters"]["sha256"] == manifest["files"]["decoder.onnx"]["sha256"]
    assert meta["parameters"]["latent_dim"] == LATENT
    int8 = c.get_model_metadata("decoder_int8")["parameters"]
    assert int8["precision"] == "int8" and int8["quality"] == {"max_abs_diff": 0.01}
    names = [m["name"] for m in c.get_model_repository_index()]
    assert names == ["decoder", "decoder_int8", "encoder", "sampler"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        c.get_model_metadata("nope")


def test_tritonclient_encoder_and_int8(
    server: Running, graphs: dict[str, Any], make_digits: Any
) -> None:
    images, _ = make_digits(8, 5)
    x = (images.astype(np.float32) / 255.0).reshape(8, 1, 28, 28)
    given = triton.InferInput("image", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    result = client(server).infer("encoder", [given])  # no outputs named: all, binary
    mu, logvar = graphs["encoder"].encode(x)
    assert result.as_numpy("mu").tobytes() == mu.tobytes()
    assert result.as_numpy("logvar").tobytes() == logvar.tobytes()
    z = sample_latents(4, LATENT, 2)
    given = triton.InferInput("z", list(z.shape), "FP32")
    given.set_data_from_numpy(z)
    images8 = client(server).infer("decoder_int8", [given]).as_numpy("image")
    assert images8.tobytes() == graphs["decoder_int8"].decode(z).tobytes()


@pytest.fixture(scope="module")
def generated(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What vae-generate writes for SEED, ROWS, COLS, TEMPERATURE: grid.png and samples.npy."""
    out = tmp_path_factory.mktemp("generated")
    args = ["--seed", SEED, "--rows", ROWS, "--cols", COLS, "--temperature", TEMPERATURE]
    args += ["--out", out / "grid.png", "--npy", out / "samples.npy"]
    subprocess.run(
        [BIN / "vae-generate", "--onnx", export_dir / "decoder.onnx", *map(str, args)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def test_samples_png_is_vae_generate_file(server: Running, generated: Path) -> None:
    query = f"seed={SEED}&rows={ROWS}&cols={COLS}&temperature={TEMPERATURE}"
    status, headers, body = request(server, "GET", f"/samples.png?{query}")
    assert status == 200 and headers["content-type"] == "image/png"
    assert body == (generated / "grid.png").read_bytes()
    status, _, default = request(server, "GET", "/samples.png")  # seed 0, 5x5, temperature 1
    assert status == 200 and default != body and default.startswith(b"\x89PNG")


def test_sampler_is_vae_generate(server: Running, generated: Path) -> None:
    inputs = []
    for name, value, datatype in (
        ("seed", np.array([SEED], np.int64), "INT64"),
        ("count", np.array([ROWS * COLS], np.int64), "INT64"),
        ("temperature", np.array([TEMPERATURE], np.float64), "FP64"),
    ):
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value, binary_data=name != "count")
        inputs.append(tensor)
    images = client(server).infer("sampler", inputs).as_numpy("image")
    assert images.tobytes() == np.load(generated / "samples.npy").tobytes()


def test_curl_style_json(server: Running, graphs: dict[str, Any]) -> None:
    z = sample_latents(3, LATENT, 4)
    nested = {"name": "z", "datatype": "FP32", "shape": [3, LATENT], "data": z.tolist()}
    status, headers, body = request(
        server, "POST", "/v2/models/decoder/versions/1/infer", infer_json([nested])
    )
    assert status == 200 and headers["content-type"] == "application/json"
    out = orjson.loads(body)
    assert out["model_name"] == "decoder" and out["model_version"] == "1"
    image = np.array(out["outputs"][0]["data"], np.float32).reshape(3, 1, 28, 28)
    assert image.tobytes() == graphs["decoder"].decode(z).tobytes()
    count = {"name": "count", "datatype": "INT64", "shape": [1], "data": [2]}
    seed = {"name": "seed", "datatype": "INT64", "shape": [1], "data": [3]}
    status, _, body = request(server, "POST", "/v2/models/sampler/infer", infer_json([seed, count]))
    assert status == 200
    assert orjson.loads(body)["outputs"][0]["shape"] == [2, 1, 28, 28]
    for path, key in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        status, _, body = request(server, "GET", path)
        assert status == 200 and orjson.loads(body) == {key: True}


def binary_body(header: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def _z(n: int = 1, width: int = LATENT, fill: float = 0.5) -> dict[str, Any]:
    return {"name": "z", "datatype": "FP32", "shape": [n, width], "data": [fill] * (n * width)}


def _binary_z(values: np.ndarray, declared: int | None = None) -> tuple[bytes, dict[str, str]]:
    size = values.nbytes if declared is None else declared
    tensor = {"name": "z", "datatype": "FP32", "shape": list(values.shape)}
    return binary_body(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}, values.tobytes()
    )


_NAN = np.full((1, LATENT), np.nan, np.float32)
_INF = np.full((1, LATENT), np.inf, np.float32)
_ZEROS = np.zeros((2, LATENT), np.float32)
_INFER = "/v2/models/decoder/infer"
_SAMPLER = "/v2/models/sampler/infer"
_SEED = {"name": "seed", "datatype": "INT64", "shape": [1], "data": [1]}
_COUNT = {"name": "count", "datatype": "INT64", "shape": [1], "data": [1]}

# (what, path, body and headers, status, the error's words)
BAD_REQUESTS: list[tuple[str, str, tuple[bytes, dict[str, str]] | None, int, str]] = [
    ("malformed JSON", _INFER, (b'{"inputs": [', {}), 400, "not valid JSON"),
    ("JSON NaN literal", _INFER, (b'{"inputs": [{"data": [NaN]}]}', {}), 400, "not valid JSON"),
    ("not an object", _INFER, (b"[1, 2]", {}), 400, "JSON object"),
    ("no inputs", _INFER, (b"{}", {}), 400, "'inputs' is missing"),
    (
        "unknown model",
        "/v2/models/nope/infer",
        (infer_json([_z()]), {}),
        404,
        "unknown model 'nope'",
    ),
    (
        "unknown version",
        "/v2/models/decoder/versions/2/infer",
        (infer_json([_z()]), {}),
        404,
        "no version '2'",
    ),
    ("unknown input", _INFER, (infer_json([{**_z(), "name": "x"}]), {}), 400, "no input 'x'"),
    ("input twice", _INFER, (infer_json([_z(), _z()]), {}), 400, "given twice"),
    (
        "wrong datatype",
        _INFER,
        (infer_json([{**_z(), "datatype": "FP64"}]), {}),
        400,
        "must be FP32, got 'FP64'",
    ),
    (
        "wrong latent size",
        _INFER,
        (infer_json([_z(1, 3)]), {}),
        400,
        r"shape \[1, 3\], expected \[-1, 20\]",
    ),
    ("wrong rank", _INFER, (infer_json([{**_z(), "shape": [LATENT]}]), {}), 400, "expected"),
    (
        "bad shape",
        _INFER,
        (infer_json([{**_z(), "shape": "1x20"}]), {}),
        400,
        "list of non-negative",
    ),
    (
        "data size",
        _INFER,
        (infer_json([{**_z(), "data": [0.5] * 3}]), {}),
        400,
        "holds 3 values",
    ),
    ("strings", _INFER, (infer_json([{**_z(), "data": ["a"] * LATENT}]), {}), 400, "numbers"),
    (
        "ragged",
        _INFER,
        (infer_json([{**_z(2), "data": [[0.5] * LATENT, [0.5]]}]), {}),
        400,
        "array",
    ),
    (
        "no data",
        _INFER,
        (infer_json([{k: v for k, v in _z().items() if k != "data"}]), {}),
        400,
        "neither",
    ),
    ("beyond float32", _INFER, (infer_json([_z(fill=1e39)]), {}), 400, "float32's range"),
    (
        "batch over the cap",
        _INFER,
        (infer_json([_z(MAX_BATCH + 1)]), {}),
        400,
        f"1..{MAX_BATCH}",
    ),
    ("empty batch", _INFER, (infer_json([_z(0)]), {}), 400, "a batch of 0"),
    ("NaN", _INFER, _binary_z(_NAN), 400, "NaN"),
    ("inf", _INFER, _binary_z(_INF), 400, "NaN or values beyond"),
    (
        "truncated binary",
        _INFER,
        (_binary_z(_ZEROS)[0][:-5], _binary_z(_ZEROS)[1]),
        400,
        "truncated",
    ),
    ("wrong binary size", _INFER, _binary_z(_ZEROS, declared=12), 400, "needs 160 bytes"),
    (
        "extra binary",
        _INFER,
        (_binary_z(_ZEROS)[0] + b"xx", _binary_z(_ZEROS)[1]),
        400,
        "2 bytes follow",
    ),
    (
        "bad header length",
        _INFER,
        (b"{}", {"Inference-Header-Content-Length": "99"}),
        400,
        "Inference-Header",
    ),
    (
        "unknown output",
        _INFER,
        (infer_json([_z()], outputs=[{"name": "x"}]), {}),
        400,
        "no output 'x'",
    ),
    (
        "binary flag",
        _INFER,
        (infer_json([_z()], parameters={"binary_data_output": 1}), {}),
        400,
        "true or false",
    ),
    ("id", _INFER, (infer_json([_z()], id=5), {}), 400, "'id' must be a string"),
    (
        "sampler count over the cap",
        _SAMPLER,
        (infer_json([_SEED, {**_COUNT, "data": [MAX_BATCH + 1]}]), {}),
        400,
        "count must be in 1",
    ),
    (
        "seed not an integer",
        _SAMPLER,
        (infer_json([{**_SEED, "data": [1.5]}, _COUNT]), {}),
        400,
        "must hold integers",
    ),
    (
        "negative seed",
        _SAMPLER,
        (infer_json([{**_SEED, "data": [-1]}, _COUNT]), {}),
        400,
        "seed must be",
    ),
    (
        "seed past INT64",
        _SAMPLER,
        (infer_json([{**_SEED, "data": [2**64 - 1]}, _COUNT]), {}),
        400,
        "INT64's range",
    ),
    ("no count", _SAMPLER, (infer_json([_SEED]), {}), 400, "needs input"),
    ("body over the cap", _INFER, (b" " * ((MAX_BODY_MB << 20) + 1), {}), 413, "above the cap"),
    ("unknown encoding", _INFER, (b"{}", {"Content-Encoding": "br"}), 415, "send gzip, deflate"),
    ("corrupt gzip", _INFER, (b"\x1f\x8bxx", {"Content-Encoding": "gzip"}), 400, "cannot be"),
    (
        "cut gzip",
        _INFER,
        (gzip.compress(b"{}" * 99)[:-9], {"Content-Encoding": "gzip"}),
        400,
        "truncated",
    ),
    (
        "gzip bomb",
        _INFER,
        (gzip.compress(b" " * (MAX_BODY_MB << 21)), {"Content-Encoding": "gzip"}),
        413,
        "inflates past the cap",
    ),
    ("rows=0", "/samples.png?rows=0", None, 400, "rows must be in 1"),
    ("seed=abc", "/samples.png?seed=abc", None, 400, "seed must be an integer, got 'abc'"),
    ("seed=1.5", "/samples.png?seed=1.5", None, 400, "seed must be an integer"),
    ("temperature=nan", "/samples.png?temperature=nan", None, 400, "temperature must be a finite"),
    ("temperature=x", "/samples.png?temperature=x", None, 400, "temperature must be a number"),
    (
        "grid over the cap",
        "/samples.png?rows=40&cols=40",
        None,
        400,
        "rows x cols must be in 1..1,024",
    ),
    ("unknown parameter", "/samples.png?scale=2", None, 400, "unknown parameter 'scale'"),
    ("unknown path", "/v2/nothing", None, 404, "no such endpoint"),
    ("wrong method", "/v2/models/decoder/infer?", None, 405, "Method Not Allowed"),
]


@pytest.mark.parametrize(
    ("what", "path", "sent", "status", "words"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_then_good(
    server: Running,
    what: str,
    path: str,
    sent: tuple[bytes, dict[str, str]] | None,
    status: int,
    words: str,
) -> None:
    if sent is None:
        got, headers, body = request(server, "GET", path)
    else:
        got, headers, body = request(server, "POST", path, sent[0], sent[1])
    assert got == status, body
    assert headers["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert "\n" not in error and re.search(words, error), error
    good_request(server)


def test_body_cut_short_then_good(server: Running) -> None:
    """A client that promises 1,000 bytes, sends 10 and hangs up: the server goes on."""
    host, port = server.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {_INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
            + b'{"inputs":'
        )
    good_request(server)


def test_metrics(server: Running) -> None:
    good_request(server)
    request(server, "POST", "/v2/models/made-up/infer", b"{}")
    request(server, "GET", "/samples.png?rows=1&cols=2")
    status, headers, body = request(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(r'vae_serve_requests_total\{code="200",model="decoder"\} [1-9]', text)
    assert re.search(r'vae_serve_requests_total\{code="404",model="unknown"\} [1-9]', text)
    assert 'model="made-up"' not in text  # a client cannot grow the label set
    assert re.search(r'vae_serve_request_seconds_count\{model="samples.png"\} [1-9]', text)
    assert re.search(r'vae_serve_images_total\{model="samples.png"\} [1-9]', text)
    assert 'vae_serve_request_seconds_bucket{le="0.005",model="encoder"}' in text
