"""vae-serve over gRPC (`--grpc-port`): tritonclient.grpc (a client that is not ours) against
the Open Inference Protocol's GRPCInferenceService, beside HTTP from the same models: inference
bit for bit with the runtime, raw and typed contents, metadata, readiness, the repository
index, and every kind of bad request, each with its status code and one-line message and each
followed by a good call. Each test runs against `vae-serve --grpc-port 0` in a subprocess and
against the same app and gRPC server in threads of this process (fixture `running`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tgrpc
from google.protobuf import json_format
from serve_support import (
    LATENT,
    MAX_BATCH,
    MAX_BODY_MB,
    Running,
    good_request,
    request,
    start_server,
    stop_server,
    thread_server,
)
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder, Encoder


@pytest.fixture(scope="module", params=["process", "thread"])
def running(request: pytest.FixtureRequest, export_dir: Path) -> Iterator[Running]:
    """vae-serve with --grpc-port 0 on the export folder (MAX_BATCH rows, MAX_BODY_MB)."""
    if request.param == "process":
        args = ["--onnx-dir", export_dir, "--max-batch", MAX_BATCH, "--max-body-mb", MAX_BODY_MB]
        server = start_server(*args, "--grpc-port", 0)
        assert server.grpc is not None, "the start line names no gRPC address"
        yield server
        code, out, err = stop_server(server)
        assert code == 0, err
        assert "stopped by SIGTERM" in out
        return
    from vae_serve.app import ServeConfig, create_app
    from vae_serve.grpc_server import app_state, bind

    config = ServeConfig(onnx_dir=export_dir, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_MB << 20)
    app = create_app(config)
    front = bind("127.0.0.1", 0, max_message_bytes=config.max_body_bytes, threads=4)
    with thread_server(app) as server:  # the lifespan has loaded the models
        front.start(app_state(app))
        server.grpc = f"127.0.0.1:{front.port}"
        yield server
        assert front.stop(5).wait(10)


@pytest.fixture(scope="module")
def graphs(export_dir: Path) -> dict[str, Any]:
    return {
        "decoder": Decoder.load(export_dir / "decoder.onnx"),
        "decoder_int8": Decoder.load(export_dir / "decoder.int8.onnx"),
        "encoder": Encoder.load(export_dir / "encoder.onnx"),
    }


def client(server: Running) -> tgrpc.InferenceServerClient:
    assert server.grpc is not None
    return tgrpc.InferenceServerClient(server.grpc)


def stub_call(server: Running, method: str, message: Any, gzip: bool = False) -> Any:
    """One call through the service's stub itself (for what tritonclient never sends)."""
    assert server.grpc is not None
    how = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
    with grpc.insecure_channel(server.grpc) as channel:
        call = getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)
        return call(message, timeout=30, compression=how)


def z_tensor(z: np.ndarray, datatype: str = "FP32", name: str = "z") -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(z.shape), datatype)
    tensor.set_data_from_numpy(z)
    return tensor


def good_call(server: Running) -> None:
    """A decode over gRPC that must succeed whatever came before (and one over HTTP)."""
    z = sample_latents(2, LATENT, 0)
    assert client(server).infer("decoder", [z_tensor(z)]).as_numpy("image").shape == (2, 1, 28, 28)
    good_request(server)


@pytest.mark.parametrize(
    ("named", "compression"), [(True, None), (False, None), (True, "gzip"), (False, "deflate")]
)
def test_decoder_raw_is_the_runtime(
    running: Running, graphs: dict[str, Any], named: bool, compression: str | None
) -> None:
    z = sample_latents(25, LATENT, 11, temperature=1.5)
    outputs = [tgrpc.InferRequestedOutput("image")] if named else None
    result = client(running).infer(
        "decoder",
        [z_tensor(z)],
        outputs=outputs,
        request_id="r1",
        compression_algorithm=compression,
    )
    images = result.as_numpy("image")
    assert images.dtype == np.float32 and images.shape == (25, 1, 28, 28)
    assert images.tobytes() == graphs["decoder"].decode(z).tobytes()
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r1", "decoder", "1")


def test_typed_contents_are_the_runtime(running: Running, graphs: dict[str, Any]) -> None:
    """Inputs as fp32_contents (what tritonclient.grpc never sends, other clients do)."""
    z = sample_latents(3, LATENT, 4)
    tensor = pb.ModelInferRequest().InferInputTensor(name="z", datatype="FP32", shape=[3, LATENT])
    tensor.contents.fp32_contents.extend(z.ravel().tolist())
    response = stub_call(
        running, "ModelInfer", pb.ModelInferRequest(model_name="decoder", inputs=[tensor])
    )
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("image", "FP32", [3, 1, 28, 28])
    assert response.raw_output_contents[0] == graphs["decoder"].decode(z).tobytes()


def test_encoder_and_int8(running: Running, graphs: dict[str, Any], make_digits: Any) -> None:
    images, _ = make_digits(8, 5)
    x = (images.astype(np.float32) / 255.0).reshape(8, 1, 28, 28)
    given = tgrpc.InferInput("image", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    result = client(running).infer("encoder", [given])
    mu, logvar = graphs["encoder"].encode(x)
    assert result.as_numpy("mu").tobytes() == mu.tobytes()
    assert result.as_numpy("logvar").tobytes() == logvar.tobytes()
    only = client(running).infer("encoder", [given], outputs=[tgrpc.InferRequestedOutput("mu")])
    assert only.as_numpy("logvar") is None and only.as_numpy("mu").tobytes() == mu.tobytes()
    z = sample_latents(4, LATENT, 2)
    images8 = client(running).infer("decoder_int8", [z_tensor(z)]).as_numpy("image")
    assert images8.tobytes() == graphs["decoder_int8"].decode(z).tobytes()


@pytest.mark.parametrize("raw", [True, False])
def test_sampler_is_vae_generate(running: Running, graphs: dict[str, Any], raw: bool) -> None:
    values = {"seed": (7, "INT64"), "count": (12, "INT64"), "temperature": (0.8, "FP64")}
    if raw:
        inputs = []
        for name, (value, datatype) in values.items():
            tensor = tgrpc.InferInput(name, [1], datatype)
            tensor.set_data_from_numpy(np.array([value], "<f8" if datatype == "FP64" else "<i8"))
            inputs.append(tensor)
        images = client(running).infer("sampler", inputs).as_numpy("image")
    else:
        message = pb.ModelInferRequest(model_name="sampler")
        for name, (value, datatype) in values.items():
            tensor = message.inputs.add(name=name, datatype=datatype, shape=[1])
            kind = "fp64_contents" if datatype == "FP64" else "int64_contents"
            getattr(tensor.contents, kind).append(value)
        response = stub_call(running, "ModelInfer", message)
        images = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(12, 1, 28, 28)
    # What vae-generate --seed 7 --temperature 0.8 draws for 12 images (Decoder.sample).
    assert images.tobytes() == graphs["decoder"].sample(12, 7, 0.8).tobytes()


def test_metadata_and_readiness(running: Running, export_dir: Path) -> None:
    c = client(running)
    assert c.is_server_live() and c.is_server_ready()
    server = c.get_server_metadata(as_json=True)
    assert server["name"] == "mnist-vae" and server["version"]
    for name in ("decoder", "encoder", "sampler", "decoder_int8"):
        assert c.is_model_ready(name), name
        assert c.is_model_ready(name, "1"), name
    assert not c.is_model_ready("nope") and not c.is_model_ready("decoder", "2")
    meta = c.get_model_metadata("decoder", as_json=True)
    assert meta["name"] == "decoder" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", str(LATENT)]}]
    image = {"name": "image", "datatype": "FP32", "shape": ["-1", "1", "28", "28"]}
    assert meta["outputs"] == [image]
    sampler = c.get_model_metadata("sampler", as_json=True)
    assert [t["datatype"] for t in sampler["inputs"]] == ["INT64", "INT64", "FP64"]
    index = c.get_model_repository_index(as_json=True)["models"]
    assert [m["name"] for m in index] == ["decoder", "decoder_int8", "encoder", "sampler"]
    assert {(m["version"], m["state"]) for m in index} == {("1", "READY")}
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        c.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="has no version '2'"):
        c.get_model_metadata("decoder", "2")


def _http_json(server: Running, path: str) -> Any:
    status, _, body = request(server, "GET", path)
    assert status == 200, body
    return orjson.loads(body)


@pytest.mark.parametrize("name", ["decoder", "encoder", "sampler", "decoder_int8"])
def test_config_is_https(running: Running, name: str) -> None:
    """The model configuration over gRPC is the JSON of GET /v2/models/{name}/config, as the
    proto's ModelConfig (the same declaration as vae-export's config.pbtxt)."""
    config = client(running).get_model_config(name).config
    expected = _http_json(running, f"/v2/models/{name}/config")
    assert config == json_format.ParseDict(expected, model_config_pb2.ModelConfig())
    assert config.name == name and config.input[0].name in ("z", "image", "seed")
    assert config == client(running).get_model_config(name, "1").config


def test_statistics_are_https_and_count_grpc(running: Running) -> None:
    """gRPC calls count in the statistics extension; its gRPC form is the HTTP JSON's."""
    c = client(running)
    before = c.get_inference_statistics("decoder").model_stats[0]
    for rows in (1, 3, 3):
        c.infer("decoder", [z_tensor(sample_latents(rows, LATENT, rows))])
    with pytest.raises(InferenceServerException):
        c.infer("decoder", [z_tensor(Z1[:, :19])])
    stats = c.get_inference_statistics("decoder").model_stats[0]
    expected = _http_json(running, "/v2/models/decoder/stats")  # nothing ran in between
    assert stats == json_format.ParseDict(expected, pb.ModelStatisticsResponse()).model_stats[0]
    inference = stats.inference_stats
    assert inference.success.count == before.inference_stats.success.count + 3
    assert inference.fail.count == before.inference_stats.fail.count + 1
    assert stats.inference_count == before.inference_count + 7
    assert inference.compute_infer.count == inference.success.count
    everything = c.get_inference_statistics().model_stats
    assert {m.name for m in everything} >= {"decoder", "encoder", "sampler", "decoder_int8"}
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        c.get_inference_statistics("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert set(c.get_server_metadata().extensions) == {
        "model_configuration",
        "statistics",
        "model_repository",
    }


def test_load_and_unload_need_explicit_control(running: Running) -> None:
    for call in (client(running).load_model, client(running).unload_model):
        with pytest.raises(InferenceServerException) as info:
            call("encoder")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "start vae-serve with --model-control explicit" in info.value.message()
    good_call(running)


def _raw(z: np.ndarray, blob: bytes | None = None, **fields: Any) -> Any:
    """A decoder request with one raw input (`blob`, default z's bytes)."""
    tensor = {"name": "z", "datatype": "FP32", "shape": list(z.shape), **fields}
    return pb.ModelInferRequest(
        model_name="decoder",
        inputs=[pb.ModelInferRequest().InferInputTensor(**tensor)],
        raw_input_contents=[z.tobytes() if blob is None else blob],
    )


Z1 = np.full((1, LATENT), 0.5, np.float32)
_BAD_CLIENT: list[tuple[str, str, Any, str, str]] = [
    # (case, model, inputs, code, message)
    ("unknown model", "nope", [z_tensor(Z1)], "NOT_FOUND", "unknown model 'nope'"),
    ("wrong datatype", "decoder", [z_tensor(Z1.astype(np.float64), "FP64")], "INVALID_ARGUMENT",
     "input 'z' must be FP32, got 'FP64'"),
    ("wrong shape", "decoder", [z_tensor(Z1[:, :19])], "INVALID_ARGUMENT",
     "input 'z' of model 'decoder' has shape [1, 19], expected [-1, 20]"),
    ("batch over the cap", "decoder", [z_tensor(np.zeros((MAX_BATCH + 1, LATENT), np.float32))],
     "RESOURCE_EXHAUSTED", f"this server takes 1..{MAX_BATCH} per request (--max-batch)"),
    ("empty batch", "decoder", [z_tensor(np.zeros((0, LATENT), np.float32))],
     "INVALID_ARGUMENT", "a batch of 0"),
    ("unknown input", "decoder", [z_tensor(Z1, name="x")], "INVALID_ARGUMENT",
     "model 'decoder' has no input 'x' (inputs: z)"),
    ("missing input", "sampler", [z_tensor(np.zeros(1, np.int64), "INT64", "seed")],
     "INVALID_ARGUMENT",
     "model 'sampler' needs input(s) count"),
    ("non-finite latents", "decoder", [z_tensor(np.full((1, LATENT), np.nan, np.float32))],
     "INVALID_ARGUMENT", "latents contain NaN"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "model", "inputs", "code", "message"), _BAD_CLIENT)
def test_bad_request_then_good(
    running: Running, case: str, model: str, inputs: list[Any], code: str, message: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client(running).infer(model, inputs)
    assert info.value.status() == f"StatusCode.{code}", case
    assert message in info.value.message() and "\n" not in info.value.message(), case
    good_call(running)


_BAD_STUB: list[tuple[str, Any, grpc.StatusCode, str]] = [
    ("raw size", _raw(Z1, Z1.tobytes()[:-4]), grpc.StatusCode.INVALID_ARGUMENT,
     "input 'z': the raw_input_contents size is 76, shape [1, 20] of FP32 needs 80 bytes"),
    ("raw count", pb.ModelInferRequest(model_name="decoder", inputs=_raw(Z1).inputs,
     raw_input_contents=[b"", b""]), grpc.StatusCode.INVALID_ARGUMENT,
     "raw_input_contents holds 2 tensors for 1 inputs"),
    ("negative shape", _raw(Z1, shape=[-1, LATENT]), grpc.StatusCode.INVALID_ARGUMENT,
     "'shape' must be a list of non-negative integers"),
    ("contents count", pb.ModelInferRequest(model_name="decoder", inputs=[
        pb.ModelInferRequest().InferInputTensor(name="z", datatype="FP32", shape=[2, LATENT])]),
     grpc.StatusCode.INVALID_ARGUMENT, "holds 0 values, shape [2, 20] needs 40"),
    ("unknown output", pb.ModelInferRequest(model_name="decoder", inputs=_raw(Z1).inputs,
     raw_input_contents=[Z1.tobytes()], outputs=[{"name": "nope"}]),
     grpc.StatusCode.INVALID_ARGUMENT, "model 'decoder' has no output 'nope' (outputs: image)"),
    ("unknown version", pb.ModelInferRequest(model_name="decoder", model_version="2",
     inputs=_raw(Z1).inputs, raw_input_contents=[Z1.tobytes()]), grpc.StatusCode.NOT_FOUND,
     "model 'decoder' has no version '2' (versions: 1)"),
    ("message over the body cap", _raw(Z1, b"\0" * ((MAX_BODY_MB << 20) + 1)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("gzip message inflating past the body cap", _raw(Z1, b"\0" * (4 * MAX_BODY_MB << 20)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "Decompressed message larger than max"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "message", "code", "text"), _BAD_STUB)
def test_bad_message_then_good(
    running: Running, case: str, message: Any, code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub_call(running, "ModelInfer", message, gzip="gzip" in case)
    error: Any = info.value
    assert error.code() == code, case
    assert text in error.details() and "\n" not in error.details(), case
    good_call(running)


def test_grpc_requests_count_in_metrics(running: Running) -> None:
    """gRPC calls count in /metrics as HTTP's, by model and the HTTP status they match."""
    good_call(running)
    with pytest.raises(InferenceServerException):
        client(running).infer("decoder", [z_tensor(Z1[:, :19])])
    status, _, body = request(running, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'vae_serve_requests_total{code="400",model="decoder"}' in text
