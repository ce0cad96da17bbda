"""Triton's extensions through tritonclient.http: model configuration (the graphs' is the
runtime's `triton_config`, a valid ModelConfig), statistics from the same tallies as /metrics
after successes and failures, `GET /v2`'s extension list, and the repository extension: the
index, and under `--model-control explicit` load and unload (off by default)."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from google.protobuf import json_format
from serve_support import LATENT, Running, client, request, start_server, stop_server
from triton_schema import PB2  # Triton's ModelConfig message
from tritonclient.utils import InferenceServerException

from vae_runtime import triton_config
from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder, Encoder

GRAPHS = {"decoder": "decoder.onnx", "decoder_int8": "decoder.int8.onnx", "encoder": "encoder.onnx"}


def _decode(server: Running, rows: int) -> None:
    z = sample_latents(rows, LATENT, rows)
    given = triton.InferInput("z", list(z.shape), "FP32")
    given.set_data_from_numpy(z)
    assert client(server).infer("decoder", [given]).as_numpy("image").shape == (rows, 1, 28, 28)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_graph_config_is_the_contract_s(server: Running, export_dir: Path, name: str) -> None:
    served = client(server).get_model_config(name)
    kind = Encoder if name.startswith("encoder") else Decoder
    graph = kind.load(export_dir / GRAPHS[name])
    expected = triton_config.graph_config(
        graph.info.role,
        graph.precision,
        LATENT,
        graph.entry.sha256 if graph.entry else "",
        graph.metadata,
        output_names=[t.name for t in graph.outputs],  # this hand-made decoder: no logits
        max_batch_size=64,  # the server's --max-batch (MAX_BATCH)
    )
    assert served == {**expected, "name": name}
    config = json_format.ParseDict(served, PB2.ModelConfig())  # Triton's schema takes it
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert config.parameters["sha256"].string_value == graph.entry.sha256  # type: ignore[union-attr]
    # The versioned path answers the same; another version is a 404.
    assert client(server).get_model_config(name, "1") == served
    status, _, body = request(server, "GET", f"/v2/models/{name}/versions/2/config")
    assert status == 404 and b"no version '2'" in body


@pytest.mark.parametrize("name", ["sampler"])
def test_code_models_have_a_config(server: Running, name: str) -> None:
    served = client(server).get_model_config(name)
    config = json_format.ParseDict(served, PB2.ModelConfig())
    metadata = client(server).get_model_metadata(name)
    assert config.backend == "python" and config.platform == metadata["platform"]
    assert config.max_batch_size == 0  # no batch axis of Triton's: dims are whole shapes
    assert [(t.name, list(t.dims), t.optional) for t in config.input] == [
        (t["name"], t["shape"], t.get("optional", False)) for t in metadata["inputs"]
    ]
    assert [t.name for t in config.output] == [t["name"] for t in metadata["outputs"]]
    assert config.input[0].data_type == PB2.DataType.TYPE_INT64


def test_unknown_model_config_is_404(server: Running) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'critic'"):
        client(server).get_model_config("critic")


def _stats(server: Running, name: str) -> dict[str, Any]:
    (entry,) = client(server).get_inference_statistics(name)["model_stats"]
    assert entry["name"] == name and entry["version"] == "1"
    return entry


def _metric(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(inner)}\}} (\S+)$", text, re.M)
    assert match, f"{name}{{{inner}}} not in /metrics"
    return float(match.group(1))


def test_statistics_count_successes_and_failures(server: Running) -> None:
    before = _stats(server, "decoder")
    started_ms = time.time_ns() // 1_000_000
    for rows in (1, 3, 3):
        _decode(server, rows)
    bad = triton.InferInput("z", [2, LATENT + 1], "FP32")  # the wrong latent size: a 400
    bad.set_data_from_numpy(np.zeros((2, LATENT + 1), np.float32))
    with pytest.raises(InferenceServerException):
        client(server).infer("decoder", [bad])
    after = _stats(server, "decoder")
    counts = {
        k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
        for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
    }
    assert counts == {
        "success": 3,
        "fail": 1,
        "queue": 3,
        "compute_input": 3,
        "compute_infer": 3,
        "compute_output": 3,
    }
    assert after["inference_count"] - before["inference_count"] == 7  # rows
    assert after["execution_count"] - before["execution_count"] == 3
    for phase in ("success", "fail", "compute_infer"):
        assert after["inference_stats"][phase]["ns"] > before["inference_stats"][phase]["ns"]
    assert after["last_inference"] >= started_ms
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    assert batches[3] >= 2 and batches[1] >= 1
    # /metrics renders the same tallies.
    text = request(server, "GET", "/metrics")[2].decode()
    latest = _stats(server, "decoder")
    for phase in ("success", "fail", "compute_infer"):
        count = _metric(text, "vae_serve_inference_phase_total", model="decoder", phase=phase)
        assert count == latest["inference_stats"][phase]["count"]
        seconds = _metric(
            text, "vae_serve_inference_duration_seconds_total", model="decoder", phase=phase
        )
        assert seconds == pytest.approx(latest["inference_stats"][phase]["ns"] / 1e9)
    rows = _metric(text, "vae_serve_inference_rows_total", model="decoder")
    assert rows == latest["inference_count"]
    # Every model, and the versioned path.
    everything = client(server).get_inference_statistics()["model_stats"]
    assert {e["name"] for e in everything} == {"decoder", "decoder_int8", "encoder", "sampler"}
    assert client(server).get_inference_statistics("decoder", "1")["model_stats"][0] == latest


def test_server_metadata_lists_the_extensions(server: Running) -> None:
    assert client(server).get_server_metadata()["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    ]


def test_repository_index_and_load_off(server: Running) -> None:
    index = client(server).get_model_repository_index()
    assert {(e["name"], e["state"]) for e in index} >= {("decoder", "READY"), ("sampler", "READY")}
    with pytest.raises(InferenceServerException, match="--model-control explicit"):
        client(server).load_model("decoder")
    status, _, body = request(server, "POST", "/v2/repository/index", b"[1]")
    assert status == 400 and b"JSON object" in body
    status, _, body = request(server, "POST", "/v2/repository/index", b'{"ready": "yes"}')
    assert status == 400 and b"'ready'" in body


def test_explicit_unload_and_load(export_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    running = start_server("--onnx-dir", folder, "--model-control", "explicit")
    try:
        c = client(running)
        c.unload_model("encoder")
        assert not c.is_model_ready("encoder") and c.is_model_ready("decoder")
        index = {e["name"]: e for e in c.get_model_repository_index()}
        assert index["encoder"]["state"] == "UNAVAILABLE" and index["decoder"]["state"] == "READY"
        ready = {e["name"] for e in request_json(running, {"ready": True})}
        assert "encoder" not in ready and "decoder" in ready
        _decode(running, 2)  # the others keep serving
        c.load_model("encoder")  # re-reads the folder
        assert c.is_model_ready("encoder")
        with pytest.raises(InferenceServerException, match="failed to load 'critic'"):
            c.load_model("critic")
        (folder / "encoder.onnx").write_bytes(b"tampered")
        with pytest.raises(InferenceServerException, match="SHA-256"):
            c.load_model("encoder")
        _decode(running, 2)  # a refused load changes nothing
        assert c.is_model_ready("encoder")
        text = request(running, "GET", "/metrics")[2].decode()
        assert _metric(text, "vae_serve_model_reloads_total", outcome="refused") == 1
        assert _metric(text, "vae_serve_model_reloads_total", outcome="loaded") == 1
    finally:
        code, _, err = stop_server(running)
    assert code == 0, err
    assert "refused" in err


def request_json(server: Running, body: dict[str, Any]) -> list[dict[str, Any]]:
    import orjson

    status, _, reply = request(server, "POST", "/v2/repository/index", orjson.dumps(body))
    assert status == 200, reply
    result: list[dict[str, Any]] = orjson.loads(reply)
    return result
