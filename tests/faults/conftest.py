"""Fixtures of the fault suite: a tiny model, trained and exported; the disk tests' work
folders and fork server; the properties' kit."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from disk import populate
from harness import Server, Tiny
from helpers import write_mnist_dir
from hypothesis import configuration
from properties import LATENT, Kit, _metadata, _pool

from vae_runtime.idx import read_idx
from vae_runtime.images import png_bytes
from vae_runtime.session import Decoder, Encoder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from vae_export.onnx_export import export_checkpoint
    from vae_train.model import VAEConfig
    from vae_train.training import TrainSettings, train

    root = tmp_path_factory.mktemp("tiny")
    data = write_mnist_dir(root / "data", 256, 64)
    settings = TrainSettings(epochs=1, batch_size=64, seed=1, device="cpu")
    train(settings, VAEConfig(hidden_dim=16, latent_dim=2), out_dir=root / "run", data_dir=data)
    result = export_checkpoint(root / "run" / "model.pt", root / "onnx")
    return Tiny(
        data, root / "run" / "model.pt", result.encoder, result.decoder, result.manifest_path
    )


# -- the disk faults: work folders, a fake mirror's payload, the fork server --------------------


@pytest.fixture(scope="module")
def digits(tiny: Tiny) -> tuple[bytes, bytes]:
    """Two input images (PNG bytes): the first two test digits."""
    images = read_idx(tiny.data / "t10k-images-idx3-ubyte.gz", limit=2)
    return png_bytes(images[0]), png_bytes(images[1])


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a fake MNIST mirror serves: 256 KiB that match no checksum."""
    path = tmp_path_factory.mktemp("mirror") / "payload.gz"
    path.write_bytes(np.random.default_rng(0).bytes(256 << 10))
    return path


@pytest.fixture
def stub_export(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, vae-export's torch.onnx step returns the graphs exported already."""
    from vae_export import onnx_export

    blobs = {"encoder": tiny.encoder.read_bytes(), "decoder": tiny.decoder.read_bytes()}
    monkeypatch.setattr(onnx_export, "graph_bytes", lambda role, *a, **k: blobs[role])
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)


@pytest.fixture
def work(
    tmp_path: Path, tiny: Tiny, digits: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A populated folder, made the current one; no VAE_DATA_DIR or VAE_DEBUG in the way."""
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    monkeypatch.delenv("VAE_DEBUG", raising=False)
    root = populate(tmp_path / "work", tiny, digits)
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    started = Server()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis' own caches (its Unicode tables, the constants it collects) go to a temporary
    folder while this module runs, never into the checkout; there is no example database at
    all (database=None)."""
    previous = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis-home"))
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(previous)


@pytest.fixture(scope="module")
def kit(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """The module's shared objects; downloads are made impossible while it lives, and torch
    runs on one thread."""
    scratch = tmp_path_factory.mktemp("properties")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    made = Kit(
        tiny=tiny,
        scratch=scratch,
        pool=_pool(scratch / "pool", tiny),
        decoder=Decoder.load(tiny.decoder),
        encoder=Encoder.load(tiny.encoder),
        ref_decoder=ort.InferenceSession(str(tiny.decoder), options, providers=cpu),
        ref_encoder=ort.InferenceSession(str(tiny.encoder), options, providers=cpu),
        manifest=json.loads(tiny.manifest.read_bytes()),
        metadata={"decoder": _metadata(tiny.decoder), "encoder": _metadata(tiny.encoder)},
        payload=torch.load(tiny.model, weights_only=True),
        env={
            "VAE_DATA_DIR": str(tiny.data),
            "XDG_CACHE_HOME": str(scratch / "cache"),
            "VAE_DEBUG": None,
            "VAE_TUNE_THREADS": "0",
        },
    )

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a property test tried to reach the network")

    assert made.decoder.latent_dim == LATENT, "the strategies here are written for latent size 2"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and steady on a busy machine
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(urllib.request, "urlopen", no_network)
            yield made
    finally:
        torch.set_num_threads(threads)
