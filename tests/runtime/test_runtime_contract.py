"""The contract's two documents: graph metadata and manifest.json (the one `Manifest` type)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from vae_runtime import contract
from vae_runtime.contract import FileEntry, Manifest
from vae_runtime.errors import ModelFileError


def _meta(**overrides: str) -> dict[str, str]:
    props = contract.build_metadata(
        "decoder",
        12,
        producer_version="9.9.9",
        source={"checkpoint": "model.pt", "sha256": "ab" * 32},
        training={"epochs": 3, "test_loss": 101.5},
    )
    props.update(overrides)
    return props


def test_metadata_round_trips() -> None:
    info = contract.parse_metadata(_meta(), "d.onnx")
    assert info.role == "decoder"
    assert info.latent_dim == 12
    assert info.format_version == contract.FORMAT_VERSION
    assert info.producer == contract.PRODUCER
    assert info.producer_version == "9.9.9"
    assert info.source == {"checkpoint": "model.pt", "sha256": "ab" * 32}
    assert info.training == {"epochs": 3, "test_loss": 101.5}
    assert all(isinstance(v, str) for v in _meta().values())


def test_unknown_role_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match="role"):
        contract.build_metadata("generator", 2, producer_version="x", source={}, training={})


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({}, "not an mnist-vae graph"),
        (_meta(**{contract.META_FORMAT: str(contract.FORMAT_VERSION + 1)}), "newer"),
        (_meta(**{contract.META_ROLE: "generator"}), "unknown role"),
        (_meta(**{contract.META_LATENT_DIM: "0"}), r"outside 1\.\.4096"),
        (_meta(**{contract.META_LATENT_DIM: str(10**12)}), r"outside 1\.\.4096"),
        (_meta(**{contract.META_LATENT_DIM: "twenty"}), "malformed"),
        (_meta(**{contract.META_IMAGE_SHAPE: json.dumps([3, 32, 32])}), "image shape"),
        (_meta(**{contract.META_IMAGE_SHAPE: "7"}), "malformed"),
        (_meta(**{contract.META_TRAINING: "{not json"}), "malformed"),
        (_meta(**{contract.META_TRAINING: "[" * 100_000}), "malformed"),
    ],
)
def test_bad_metadata_names_the_file_and_problem(props: dict[str, str], message: str) -> None:
    with pytest.raises(ModelFileError, match=message) as info:
        contract.parse_metadata(props, "weird.onnx")
    assert str(info.value).startswith("weird.onnx: ")
    assert "\n" not in str(info.value)


def _manifest(**details: Any) -> Manifest:
    return Manifest(
        files={"decoder.onnx": FileEntry.of(b"graph", "decoder")},
        latent_dim=20,
        checkpoint={"name": "model.pt", "sha256": "cd" * 32},
        details=details,
    )


def test_manifest_round_trips_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / contract.MANIFEST_FILE
    path.write_bytes(_manifest(opset=18, training={"epochs": 3}).to_bytes())
    loaded = Manifest.load(path)
    assert loaded.files == {
        "decoder.onnx": FileEntry(hashlib.sha256(b"graph").hexdigest(), 5, "decoder", "fp32")
    }
    assert loaded.latent_dim == 20
    assert loaded.details == {"opset": 18, "training": {"epochs": 3}}
    assert loaded.path == path
    assert Manifest.beside(tmp_path / "decoder.onnx") == loaded
    assert Manifest.beside(tmp_path / "sub" / "decoder.onnx") is None
    assert loaded.verify(tmp_path / "decoder.onnx", b"graph").role == "decoder"
    with pytest.raises(ModelFileError, match=r"decoder.onnx: SHA-256 .* does not match"):
        loaded.verify(tmp_path / "decoder.onnx", b"graph, modified")
    with pytest.raises(ModelFileError, match=r"encoder.onnx: not listed in .*manifest.json"):
        loaded.verify(tmp_path / "encoder.onnx", b"graph")


def _tampered() -> list[tuple[Any, str]]:
    good = json.loads(_manifest().to_bytes())
    cases: list[tuple[Any, str]] = [([], "not an mnist-vae manifest")]
    for key, value, message in (
        ("format", "other", "not an mnist-vae manifest"),
        ("format_version", 99, "newer than this mnist-vae"),
        ("format_version", "1", "bad manifest version"),
        ("latent_dim", 0, "'latent_dim' is 0"),
        ("latent_dim", True, "'latent_dim' is True"),
        ("files", {}, "lists no graph files"),
        ("files", {"../x.onnx": good["files"]["decoder.onnx"]}, "not a file name"),
        ("files", {"d.onnx": 1}, "not an object"),
        ("files", {"d.onnx": {"sha256": "xyz", "bytes": 1}}, "expected 64 hex digits"),
        ("files", {"d.onnx": {"sha256": "ab" * 32, "bytes": -1}}, "expected a byte count"),
        ("files", {"d.onnx": {"sha256": "ab" * 32, "bytes": 1, "role": "x"}}, "role 'x'"),
        ("checkpoint", "model.pt", "'checkpoint' is not an object"),
        ("files", {"d.onnx": {"sha256": "ab" * 32, "bytes": 1, "precision": "int4"}}, "'int4'"),
        ("files", {"d.onnx": {"sha256": "ab" * 32, "bytes": 1, "quality": [1]}}, "quality"),
    ):
        cases.append(({**good, key: value}, message))
    return cases


@pytest.mark.parametrize(("content", "message"), _tampered())
def test_every_manifest_field_is_checked(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / contract.MANIFEST_FILE
    path.write_text(json.dumps(content))
    with pytest.raises(ModelFileError, match=message) as info:
        Manifest.load(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[" * 10**6, "JSON")],
)
def test_unreadable_manifests(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / contract.MANIFEST_FILE
    path.write_bytes(raw)
    with pytest.raises(ModelFileError, match=message):
        Manifest.load(path)
    with pytest.raises(ModelFileError, match="cannot read the manifest"):
        Manifest.load(tmp_path / "missing.json")


def test_a_huge_file_is_no_manifest(tmp_path: Path) -> None:
    path = tmp_path / contract.MANIFEST_FILE
    with open(path, "wb") as f:
        f.truncate(17 << 20)  # sparse: 17 MiB that take no disk
    with pytest.raises(ModelFileError, match="is not a manifest"):
        Manifest.load(path)


def test_graph_files_are_named_by_role_and_precision() -> None:
    names = {(r, p): contract.graph_file(r, p) for r in contract.ROLES for p in contract.PRECISIONS}
    assert names[("decoder", "fp32")] == contract.DECODER_FILE == "decoder.onnx"
    assert names[("encoder", "int8")] == "encoder.int8.onnx"
    assert names[("decoder", "fp16")] == "decoder.fp16.onnx"
    assert len(set(names.values())) == len(names)
    with pytest.raises(ValueError, match="no graph file"):
        contract.graph_file("decoder", "int4")


def test_precision_in_metadata_and_manifest_round_trips(tmp_path: Path) -> None:
    meta = contract.build_metadata(
        "decoder", 20, producer_version="t", source={}, training={}, precision="int8"
    )
    assert contract.parse_metadata(meta, "d.onnx").precision == "int8"
    old = {k: v for k, v in meta.items() if k != contract.META_PRECISION}
    assert contract.parse_metadata(old, "d.onnx").precision == "fp32"  # graphs before it
    with pytest.raises(ModelFileError, match=r"d\.onnx: unknown precision .int4."):
        contract.parse_metadata({**meta, contract.META_PRECISION: "int4"}, "d.onnx")
    with pytest.raises(ValueError, match="precision 'int4'"):
        contract.build_metadata(
            "decoder", 2, producer_version="", source={}, training={}, precision="int4"
        )
    entry = FileEntry.of(b"g", "decoder", "int8", {"pixel_max_abs": 0.02, "images": "t10k"})
    path = tmp_path / contract.MANIFEST_FILE
    path.write_bytes(Manifest(files={"decoder.int8.onnx": entry}, latent_dim=20).to_bytes())
    loaded = Manifest.load(path)
    assert loaded.files == {"decoder.int8.onnx": entry}
    assert loaded.to_bytes() == path.read_bytes()
