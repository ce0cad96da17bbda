"""Live model updates, for real: `vae-serve --model-control poll` on a folder that is re-exported
three times (graphs first, manifest last, as vae-export commits), once with a tampered graph,
while client threads stream tritonclient.http decoder requests. No request fails, every reply is
wholly one export's, each thread moves forward only, a good export answers within 5 s, and the
tampered one is refused (log, metric) while the old graphs keep answering. Plus the poller's
rules in-process: a half-copied folder is refused once and retried when the manifest changes."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from helpers import expect_error
from runtime_graphs import build_decoder, build_encoder
from serve_support import LATENT, client, request, start_server, stop_server
from typer.testing import CliRunner

from vae_runtime.contract import MANIFEST_FILE, FileEntry, Manifest
from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder
from vae_serve import cli as serve_cli
from vae_serve.app import Metrics, ServeConfig, State
from vae_serve.models import load_models
from vae_serve.reload import ModelControl

Z = sample_latents(4, LATENT, 3)
SWAP_SECONDS = 5.0  # a good export answers within this
Export = dict[str, bytes]  # file name -> bytes, manifest.json last


def make_export(seed: int, templates: np.ndarray, tmp: Path) -> tuple[Export, np.ndarray]:
    """A hand-built export whose decoder paints its own mix of digits (seed), and the images
    it decodes Z into (what identifies a reply as this export's)."""
    order = np.random.default_rng(seed).permutation(len(templates))
    decoder = build_decoder(LATENT, 32, seed=seed, templates=templates[order]).SerializeToString()
    encoder = build_encoder(LATENT, 32, seed=seed).SerializeToString()
    files = {"decoder.onnx": decoder, "encoder.onnx": encoder}
    entries = {n: FileEntry.of(b, n.split(".")[0], "fp32") for n, b in files.items()}
    manifest = Manifest(files=entries, latent_dim=LATENT, details={"seed": seed})
    folder = tmp / f"export-{seed}"
    folder.mkdir()
    (folder / "decoder.onnx").write_bytes(decoder)
    expected = Decoder.load(folder / "decoder.onnx").decode(Z)
    return {**files, MANIFEST_FILE: manifest.to_bytes()}, expected


def commit(folder: Path, export: Export) -> None:
    """Write the files as vae-export commits them: each renamed into place, the manifest last."""
    for name, data in export.items():
        staged = folder / f".{name}.staged"
        staged.write_bytes(data)
        os.replace(staged, folder / name)


def tampered(export: Export) -> Export:
    """The export with one byte of its decoder changed after the manifest was written."""
    data = bytearray(export["decoder.onnx"])
    data[len(data) // 2] ^= 0x01
    return {**export, "decoder.onnx": bytes(data)}


@pytest.fixture(scope="module")
def exports(templates: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> list:
    tmp = tmp_path_factory.mktemp("reload")
    return [make_export(seed, templates, tmp) for seed in (1, 2, 3, 4)]


class Stream:
    """Client threads decoding Z in a loop; each reply is identified as one export's."""

    def __init__(self, address: str, expected: list[np.ndarray], threads: int = 4) -> None:
        self.address, self.expected = address, expected
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.seen: list[list[tuple[float, int]]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, index: int) -> None:
        c = triton.InferenceServerClient(self.address, network_timeout=30)
        given = triton.InferInput("z", list(Z.shape), "FP32")
        given.set_data_from_numpy(Z)
        while not self.stop.is_set():
            try:
                images = c.infer("decoder", [given]).as_numpy("image")
            except Exception as exc:  # a failed request: the test fails on it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            which = [i for i, e in enumerate(self.expected) if np.array_equal(images, e)]
            if len(which) != 1:
                self.errors.append(f"a reply from no single export (matches {which})")
                continue
            self.seen[index].append((time.monotonic(), which[0]))

    def latest(self) -> int | None:
        last = [s[-1] for s in self.seen if s]
        return max(last)[1] if last else None

    def wait_for(self, export: int, since: float, timeout: float) -> float:
        """Seconds from `since` until every thread has had a reply from `export`."""
        deadline = since + timeout
        while time.monotonic() < deadline:
            if all(any(t >= since and e == export for t, e in s) for s in self.seen):
                return time.monotonic() - since
            time.sleep(0.02)
        raise AssertionError(f"export {export} did not answer within {timeout} s")


def _metric(text: str, pattern: str) -> float:
    match = re.search(pattern + r" (\S+)$", text, re.M)
    assert match, pattern
    return float(match.group(1))


def test_reexports_under_load(exports: list, tmp_path: Path) -> None:
    folder = tmp_path / "served"
    folder.mkdir()
    commit(folder, exports[0][0])
    started = time.monotonic()
    running = start_server("--onnx-dir", folder, "--model-control", "poll", "--poll-seconds", 0.2)
    stream = Stream(running.address, [expected for _, expected in exports])
    try:
        for thread in stream.threads:
            thread.start()
        stream.wait_for(0, started, 10)
        # Good, tampered, good: exports 1, 2 (refused), 3.
        commit(folder, exports[1][0])
        assert stream.wait_for(1, time.monotonic(), SWAP_SECONDS) < SWAP_SECONDS
        commit(folder, tampered(exports[2][0]))
        deadline, refused = time.monotonic() + SWAP_SECONDS, 0.0
        while refused < 1 and time.monotonic() < deadline:  # the poller looks, and refuses
            text = request(running, "GET", "/metrics")[2].decode()
            refused = _metric(text, r'vae_serve_model_reloads_total\{outcome="refused"\}')
            time.sleep(0.05)
        assert refused == 1
        since = time.monotonic()
        time.sleep(1.0)  # five more polls: not retried, and the old graphs answer
        assert all(any(t >= since for t, _ in s) for s in stream.seen)  # still answering
        assert all(e == 1 for s in stream.seen for t, e in s if t >= since)
        commit(folder, exports[3][0])
        assert stream.wait_for(3, time.monotonic(), SWAP_SECONDS) < SWAP_SECONDS
    finally:
        stream.stop.set()
        for thread in stream.threads:
            thread.join(30)
        body = request(running, "GET", "/metrics")[2]
        metadata = client(running).get_model_metadata("decoder")
        code, _, err = stop_server(running)
    assert stream.errors == [], stream.errors[:5]
    for seen in stream.seen:  # each thread's replies move forward only: 0, then 1, then 3
        order = [e for _, e in seen]
        assert order == sorted(order) and 2 not in order
    text = body.decode()
    assert _metric(text, r'vae_serve_model_reloads_total\{outcome="loaded"\}') == 2
    assert _metric(text, r'vae_serve_model_reloads_total\{outcome="refused"\}') == 1
    served = hashlib.sha256(exports[3][0][MANIFEST_FILE]).hexdigest()
    assert _metric(text, rf'vae_serve_export_info\{{export_sha256="{served}",exported_at=""\}}')
    assert metadata["parameters"]["export_sha256"] == served
    assert code == 0, err
    assert "model update refused" in err and "SHA-256" in err
    assert time.monotonic() - started < 60


def test_poller_refuses_a_half_copied_folder_until_the_manifest_changes(
    exports: list, tmp_path: Path
) -> None:
    folder = tmp_path / "served"
    folder.mkdir()
    commit(folder, exports[0][0])
    config = ServeConfig(onnx_dir=folder, model_control="poll")
    models = load_models(config)
    state = State(config, models, Metrics(list(models.models)))
    state.metrics.serving(models)
    control = ModelControl(state)  # polled by hand here: no thread
    assert control.poll_once() is None  # the export it serves
    new = exports[1][0]
    (folder / "encoder.onnx").write_bytes(new["encoder.onnx"])
    (folder / MANIFEST_FILE).write_bytes(new[MANIFEST_FILE])  # decoder.onnx not copied yet
    assert control.poll_once() == "refused"
    assert state.models is models  # the old ones serve on
    assert control.poll_once() is None  # not retried until the manifest changes
    (folder / "decoder.onnx").write_bytes(new["decoder.onnx"])
    assert control.poll_once() is None
    os.utime(folder / MANIFEST_FILE, ns=(1, 1))  # the copy finishes: the manifest is new again
    assert control.poll_once() == "loaded"
    assert state.models is not models
    assert state.models.export["export_sha256"] == hashlib.sha256(new[MANIFEST_FILE]).hexdigest()
    assert state.metrics.reloads.labels("refused")._value.get() == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model-control", "watch"], "model control must be one of none, poll, explicit"),
        (["--model-control", "poll", "--poll-seconds", "0"], "poll seconds must be from 0.05"),
        (["--model-control", "poll", "--poll-seconds", "nan"], "poll seconds must be from 0.05"),
        (["--model-control", "explicit", "--workers", "2"], "explicit needs --workers 1"),
        (["--model-control", "poll", "--ray"], "under Ray Serve a model update is a redeploy"),
    ],
)
def test_model_control_refusals(export_dir: Path, args: list[str], words: str) -> None:
    result = CliRunner().invoke(serve_cli.app, ["--onnx-dir", str(export_dir), *args])
    expect_error(result, 2, words)


def test_poll_needs_a_folder(export_dir: Path) -> None:
    args = ["--decoder", str(export_dir / "decoder.onnx"), "--model-control", "poll"]
    expect_error(CliRunner().invoke(serve_cli.app, args), 2, "poll watches an --onnx-dir")
    settings = {"onnx_dir": str(export_dir), "model_control": "poll", "poll_seconds": "0.5"}
    assert ServeConfig.from_dict(settings).poll_seconds == 0.5  # a Serve config's strings
