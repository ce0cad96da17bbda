"""Fixtures of the runtime suite: a folder of small graphs built without torch or the exporter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_graphs import build_decoder, build_encoder, write_blank_png, write_manifest

from vae_runtime.contract import MANIFEST_FILE


@pytest.fixture(scope="session")
def templates(make_digits: Callable[..., tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Ten rendered digits, 0 to 9 if the renderer drew them all."""
    images, labels = make_digits(64, 3)
    return np.stack([images[np.argmax(labels == d)] for d in range(10)])


@pytest.fixture(scope="session")
def graphs(tmp_path_factory: pytest.TempPathFactory, templates: np.ndarray) -> dict[str, Path]:
    """One folder with decoder.onnx (latent 2) + encoder.onnx (latent 2) + manifest.json, and
    loose graphs beside it: decoder20.onnx, encoder20.onnx (latent 20), nan_decoder.onnx."""
    root = tmp_path_factory.mktemp("graphs")
    pair = root / "export"
    pair.mkdir()
    onnx.save(build_decoder(2, 16, templates=templates), pair / "decoder.onnx")
    onnx.save(build_encoder(2, 16), pair / "encoder.onnx")
    write_manifest(pair, "decoder.onnx", "encoder.onnx")
    onnx.save(build_decoder(20, 32, templates=templates), root / "decoder20.onnx")
    onnx.save(build_encoder(20, 32), root / "encoder20.onnx")
    onnx.save(build_decoder(2, 16, nan=True), root / "nan_decoder.onnx")
    return {
        "decoder": pair / "decoder.onnx",
        "encoder": pair / "encoder.onnx",
        "manifest": pair / MANIFEST_FILE,
        "decoder20": root / "decoder20.onnx",
        "encoder20": root / "encoder20.onnx",
        "nan_decoder": root / "nan_decoder.onnx",
    }


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 50,000 x 50,000 PNG (2.5 Gpx) in a 300 KB file."""
    return write_blank_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 50_000, 50_000)
