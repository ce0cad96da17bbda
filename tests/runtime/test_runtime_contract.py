"""The contract's two documents: graph metadata and manifest.json (the one `Manifest` type)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vae_runtime import contract
from vae_runtime.contract import SCORE_REFERENCE, FileEntry, Manifest, ScoreReference
from vae_runtime.errors import InvalidArgumentError, ModelFileError


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


def test_the_decoder_declares_optional_logits_after_the_image() -> None:
    assert [(t.name, t.optional) for t in contract.DECODER.outputs] == [
        ("image", False),
        ("logits", True),
    ]
    assert contract.DECODER.outputs[1].shape(20) == contract.IMAGE_SHAPE
    assert not any(t.optional for t in (*contract.ENCODER.inputs, *contract.ENCODER.outputs))


def _reference(values: Any = None, **kw: Any) -> ScoreReference:
    scores = np.linspace(-120.0, -60.0, 501) if values is None else values
    return ScoreReference.of(scores, k=kw.pop("k", 64), seed=kw.pop("seed", 0), **kw)


def test_score_reference_holds_the_quantiles_and_reads_percentiles() -> None:
    ref = _reference()
    assert (ref.statistic, ref.k, ref.seed, ref.count) == ("iwae", 64, 0, 501)
    assert len(ref.quantiles) == 1001
    assert ref.quantiles[0] == -120.0
    assert ref.quantiles[-1] == -60.0
    assert ref.mean == -90.0
    got = ref.percentile(np.array([-200.0, -120.0, -90.0, -75.0, -60.0, 0.0, np.nan]))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got[:6], [0.0, 0.0, 50.0, 75.0, 100.0, 100.0], atol=1e-6)
    assert np.isnan(got[6])
    assert ScoreReference.from_json(json.loads(json.dumps(ref.to_json()))) == ref


def test_percentiles_of_the_reference_scores_are_uniform() -> None:
    scores = np.random.default_rng(0).normal(-100.0, 15.0, 5000)
    ref = _reference(scores)
    pct = ref.percentile(scores)
    assert np.all((pct >= 0) & (pct <= 100))
    hist, _ = np.histogram(pct, bins=10, range=(0, 100))
    np.testing.assert_allclose(hist, 500, atol=5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"statistic": "mse"}, "statistic 'mse'"),
        ({"k": 0}, "k is 0"),
        ({"seed": -1}, "seed is -1"),
        ({"count": 1.5}, "count is 1.5"),
        ({"quantiles": [1.0, 2.0]}, "2 quantiles, expected 1001"),
        ({"quantiles": [float(i) for i in range(1001)][::-1]}, "not ascending"),
        ({"quantiles": "many"}, "not a list of numbers"),
        ({"mean": None}, "'mean' is None"),
        ({"mean": 1e9}, "outside the quantiles' range"),
    ],
)
def test_a_bad_score_reference_is_refused_on_load(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    good = _reference().to_json()
    with pytest.raises(InvalidArgumentError, match=message):
        ScoreReference.from_json({**good, **change})
    path = tmp_path / contract.MANIFEST_FILE
    path.write_bytes(_manifest(**{SCORE_REFERENCE: {**good, **change}}).to_bytes())
    with pytest.raises(ModelFileError, match=f"'score_reference': .*{message}") as info:
        Manifest.load(path)
    assert "\n" not in str(info.value)


def test_manifests_with_and_without_a_reference_load(tmp_path: Path) -> None:
    path = tmp_path / contract.MANIFEST_FILE
    path.write_bytes(_manifest(opset=18).to_bytes())
    assert Manifest.load(path).score_reference is None  # written before references existed
    ref = _reference()
    path.write_bytes(_manifest(**{SCORE_REFERENCE: ref.to_json()}).to_bytes())
    assert Manifest.load(path).score_reference == ref
