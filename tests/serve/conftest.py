"""Fixtures of vae-serve's tests: an export folder with fp32 and int8 graphs, and the server
running for real: in a subprocess (`vae-serve`, as users start it) and in a thread of this
process (the same app under uvicorn, so that coverage sees it). Helpers: serve_support.py."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_graphs, shared
from runtime_graphs import build_decoder, build_encoder
from serve_support import (
    LATENT,
    MAX_BATCH,
    MAX_BODY_MB,
    Running,
    int8_copy,
    start_server,
    stop_server,
    thread_server,
)

from vae_runtime.contract import MANIFEST_FILE, FileEntry, Manifest


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory, templates: np.ndarray) -> Path:
    """decoder.onnx, encoder.onnx (latent 20), decoder.int8.onnx, and their manifest.json."""
    folder = tmp_path_factory.mktemp("serve") / "export"
    folder.mkdir()
    onnx.save(build_decoder(LATENT, 32, templates=templates), folder / "decoder.onnx")
    onnx.save(build_encoder(LATENT, 32), folder / "encoder.onnx")
    int8_copy(folder / "decoder.onnx", folder / "decoder.int8.onnx")
    entries = {
        name: FileEntry.of((folder / name).read_bytes(), role, precision, quality)
        for name, role, precision, quality in (
            ("decoder.onnx", "decoder", "fp32", None),
            ("encoder.onnx", "encoder", "fp32", None),
            ("decoder.int8.onnx", "decoder", "int8", {"max_abs_diff": 0.01}),
        )
    }
    manifest = Manifest(files=entries, latent_dim=LATENT)
    (folder / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    return folder


@pytest.fixture(scope="session")
def templates(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Ten rendered digits (the decoder's output layer paints them)."""
    images, labels = make_digits(64, 3)
    return np.stack([images[np.argmax(labels == d)] for d in range(10)])


@pytest.fixture(scope="module", params=["process", "thread"])
def server(request: pytest.FixtureRequest, export_dir: Path) -> Iterator[Running]:
    """vae-serve on the export folder, capped at MAX_BATCH rows and MAX_BODY_MB: as a
    subprocess, and as the same app under uvicorn in a thread of this process."""
    if request.param == "process":
        running = start_server(
            "--onnx-dir", export_dir, "--max-batch", MAX_BATCH, "--max-body-mb", MAX_BODY_MB
        )
        yield running
        code, _, err = stop_server(running)
        assert code == 0, err
        return
    from vae_serve.app import ServeConfig, create_app

    config = ServeConfig(onnx_dir=export_dir, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_MB << 20)
    with thread_server(create_app(config)) as running:
        yield running


SCORE_K, SCORE_SEED = 8, 0  # the hand-made export's score reference: k and seed


@pytest.fixture(scope="session")
def score_dir(
    tmp_path_factory: pytest.TempPathFactory,
    templates: np.ndarray,
    make_digits: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> Path:
    """An export folder the service scores with: a decoder with logits, an encoder, and a
    manifest whose score reference was computed by the runtime's Scorer on 64 digits."""
    from vae_runtime.contract import SCORE_REFERENCE, ScoreReference
    from vae_runtime.scoring import Scorer
    from vae_runtime.session import Decoder, Encoder

    folder = tmp_path_factory.mktemp("serve-score") / "export"
    folder.mkdir()
    decoder = build_decoder(LATENT, 32, templates=templates, logits=True)
    onnx.save(decoder, folder / "decoder.onnx")
    onnx.save(build_encoder(LATENT, 32), folder / "encoder.onnx")
    files = {
        name: FileEntry.of((folder / name).read_bytes(), role, "fp32")
        for name, role in (("decoder.onnx", "decoder"), ("encoder.onnx", "encoder"))
    }
    scorer = Scorer(Encoder.load(folder / "encoder.onnx"), Decoder.load(folder / "decoder.onnx"))
    digits, _ = make_digits(64, 5)
    iwae = scorer.score(digits, k=SCORE_K, seed=SCORE_SEED).iwae
    reference = ScoreReference.of(iwae, k=SCORE_K, seed=SCORE_SEED, source="64 rendered digits")
    details = {SCORE_REFERENCE: reference.to_json()}
    manifest = Manifest(files=files, latent_dim=LATENT, details=details)
    (folder / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    return folder
