"""int8 and fp16 graphs: written beside fp32 on request, same contract, gated against fp32."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import expect_error, matmul_integer, tree
from typer.testing import CliRunner

from vae_export import onnx_export, precision
from vae_export.cli import app
from vae_export.onnx_export import ExportResult, export_checkpoint
from vae_export.precision import (
    LIMITS,
    Quality,
    QualityError,
    measure,
    parse_graph_precisions,
)
from vae_runtime import Scorer
from vae_runtime import contract as C
from vae_runtime.errors import InvalidArgumentError
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.session import Decoder, Encoder
from vae_train.data import TEST_IMAGES, find_images

ALL = ",".join(C.PRECISIONS)


@pytest.fixture(scope="module")
def every_precision(
    checkpoints: dict[str, Path], mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    """The seed architecture (784-400-20) exported at every precision, gated on test images."""
    out = tmp_path_factory.mktemp("precisions")
    return export_checkpoint(checkpoints["seed"], out, precision=ALL, data_dir=mnist_dir)


def test_every_precision_is_written_with_the_same_contract(every_precision: ExportResult) -> None:
    result = every_precision
    out = result.manifest_path.parent
    assert set(result.graphs) == {(r, p) for r in C.ROLES for p in C.PRECISIONS}
    assert {p.name for p in out.iterdir()} == {
        *(C.graph_file(r, p) for r in C.ROLES for p in C.PRECISIONS),
        C.MANIFEST_FILE,
    }
    fp32 = {role: onnx.load(str(out / C.graph_file(role))) for role in C.ROLES}
    for (role, p), path in result.graphs.items():
        graph = (Encoder if role == "encoder" else Decoder).load(path)  # the contract checks
        assert (graph.precision, graph.info.role) == (p, role)
        model = onnx.load(str(path))
        props = {m.key: m.value for m in model.metadata_props}
        want = {m.key: m.value for m in fp32[role].metadata_props} | {C.META_PRECISION: p}
        assert props == want
        for mine, theirs in ((model.graph.input, fp32[role].graph.input),
                             (model.graph.output, fp32[role].graph.output)):  # fmt: skip
            assert [v.SerializeToString() for v in mine] == [v.SerializeToString() for v in theirs]
        ops = {n.op_type for n in model.graph.node}
        assert ("MatMulInteger" in ops) == (p == "int8")
        halves = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert halves == (p == "fp16")


def test_lower_precisions_are_smaller(every_precision: ExportResult) -> None:
    size = {key: path.stat().st_size for key, path in every_precision.graphs.items()}
    for role in C.ROLES:
        assert size[(role, "int8")] <= 0.30 * size[(role, "fp32")]  # the target
        assert size[(role, "fp16")] <= 0.52 * size[(role, "fp32")]


def test_the_manifest_records_precision_and_quality(every_precision: ExportResult) -> None:
    path = every_precision.manifest_path
    manifest = C.Manifest.load(path)
    assert manifest.to_bytes() == path.read_bytes()  # round-trips
    assert manifest.files == every_precision.manifest.files
    for (role, p), graph in every_precision.graphs.items():
        entry = manifest.files[graph.name]
        assert (entry.role, entry.precision, entry.size) == (role, p, graph.stat().st_size)
        if p == "fp32":
            assert entry.quality == {}
            continue
        q = entry.quality
        assert q["pixel_max_abs"] <= LIMITS[p]["pixel_max_abs"]
        assert q["images"].startswith("t10k images (128)")
        assert q["limits"].startswith("pixel_max_abs <= ")
        key = "mu_max_abs" if role == "encoder" else "prior_max_abs"
        assert 0 < q[key] < 0.1
    int8 = json.loads(path.read_text())["export"]["int8"]
    assert "quantize_dynamic" in int8


def test_quality_figures_are_measured_not_assumed(every_precision: ExportResult) -> None:
    g = every_precision.graphs
    pair = {
        p: (Encoder.load(g[("encoder", p)]), Decoder.load(g[("decoder", p)]))
        for p in ("fp32", "int8")
    }
    images = np.random.default_rng(0).uniform(0, 1, (32, 1, 28, 28)).astype(np.float32)
    same = measure("int8", pair["fp32"], pair["fp32"], images, "noise")
    assert all(v == 0 for k, v in same.figures.items() if not k.startswith("bce"))
    assert same.failures == [] and same.images == "noise (32)"
    int8 = measure("int8", pair["fp32"], pair["int8"], images, "noise")
    assert int8.figures["decoder_prior_max_abs"] > 0 and int8.figures["encoder_mu_mean_abs"] > 0
    assert int8.figures["pixel_max_abs"] == max(
        int8.figures["decoder_prior_max_abs"], int8.figures["decoder_recon_max_abs"]
    )
    bad = Quality("int8", {**int8.figures, "pixel_mean_abs": float("nan")}, "x")
    assert bad.failures == ["mean abs pixel error nan > limit 0.002"]


def test_int8_integer_matmuls_are_exact_on_this_cpu(every_precision: ExportResult) -> None:
    """Each MatMulInteger of the shipped int8 graphs, run alone by onnxruntime on this CPU,
    equals numpy's int32 product, at the activations most likely to overflow (all 255, the
    zero point 0) and at random ones. With signed weights (u8 x s8), x86 CPUs without VNNI
    saturate pairs of products in 16 bits (an AVX2-only EPYC: wrong here); the graphs carry
    unsigned weights, exact on every x86 CPU."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    checked = 0
    for role in C.ROLES:
        model = onnx.load(str(every_precision.graphs[(role, "int8")]))
        init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in (n for n in model.graph.node if n.op_type == "MatMulInteger"):
            weights, zero = init[node.input[1]], init[node.input[3]]
            assert weights.dtype == zero.dtype == np.uint8  # u8 x u8 (the module doc)
            k, _ = weights.shape
            session = ort.InferenceSession(
                matmul_integer(weights, zero), providers=["CPUExecutionProvider"]
            )
            a = np.concatenate(
                [np.full((8, k), 255, np.uint8), rng.integers(0, 256, (56, k), dtype=np.uint8)]
            )
            want = a.astype(np.int32) @ (weights.astype(np.int32) - zero.astype(np.int32))
            np.testing.assert_array_equal(session.run(None, {"a": a})[0], want, err_msg=node.name)
            checked += 1
    assert checked == 2  # the encoder's fc1 and the decoder's fc4


def _broken_lower(real: object) -> object:
    """precision.lower with the int8 decoder's output biases shifted by +1: every pixel's logit
    moves, as a wrong scale or a broken quantizer would move it."""

    def lower(fp32: bytes, role: str, p: str) -> bytes:
        data: bytes = real(fp32, role, p)  # type: ignore[operator]
        if role != "decoder" or p != "int8":
            return data
        model = onnx.load_from_string(data)
        for t in model.graph.initializer:
            if t.name == "fc4.bias":
                values = onnx.numpy_helper.to_array(t) + 1.0
                t.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), t.name))
        return model.SerializeToString()

    return lower


def test_the_gate_refuses_a_broken_graph_and_writes_nothing(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "lower", _broken_lower(precision.lower))
    (tmp_path / "decoder.onnx").write_bytes(b"the user's older graph")
    before = tree(tmp_path)
    with pytest.raises(QualityError) as info:
        export_checkpoint(checkpoints["tiny"], tmp_path, precision="fp32,int8", force=True)
    message = str(info.value)
    assert message.startswith("int8 graphs: max abs pixel error ")
    assert "> limit 0.035" in message and "mean abs pixel error" in message
    assert message.endswith(f"(against the fp32 graphs); nothing written to {tmp_path}")
    assert tree(tmp_path) == before


def test_lower_precisions_alone(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    result = export_checkpoint(checkpoints["tiny"], tmp_path, precision="int8")
    assert {p.name for p in tmp_path.iterdir()} == {
        "encoder.int8.onnx",
        "decoder.int8.onnx",
        "manifest.json",
    }  # the fp32 reference was staged only: no trace of it
    assert set(result.manifest.files) == {"encoder.int8.onnx", "decoder.int8.onnx"}
    assert result.decoder == tmp_path / "decoder.int8.onnx"
    assert Decoder.load(result.decoder).sample(4).shape == (4, 1, 28, 28)


@pytest.mark.parametrize("text", ["", "fp32,int9", "FP32", "int8,,fp16", " , "])
def test_bad_precision_lists(text: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="expected a comma-separated subset of"):
        parse_graph_precisions(text)
    result = CliRunner().invoke(app, [str(checkpoints["tiny"]), "-o", str(tmp_path), "-p", text])
    expect_error(result, 2, "--precision")
    assert list(tmp_path.iterdir()) == []


def test_precision_lists_are_ordered_and_deduplicated() -> None:
    assert parse_graph_precisions("fp16, int8,fp32,int8") == ("fp32", "int8", "fp16")
    assert parse_graph_precisions("int8") == ("int8",)


def test_the_quantizers_temporary_file_fails_in_the_users_words(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_folder = tmp_path / "tmp"
    not_a_folder.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))  # mkdtemp: ENOTDIR
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(checkpoints["tiny"]), "-o", str(out), "-p", "int8"])
    line = expect_error(result, 1, re.escape(f"{out / 'encoder.int8.onnx'}: "))
    assert "Not a directory" in line and str(not_a_folder) not in line
    assert not out.exists()


def test_every_precision_scores_with_its_logits_near_fp32(
    every_precision: ExportResult, mnist_dir: Path
) -> None:
    """The int8 and fp16 decoders keep the float32 logits output: each pair scores, against the
    one reference the export made with the fp32 graphs."""
    out = every_precision.manifest_path.parent
    test_file = find_images(mnist_dir, TEST_IMAGES)
    assert test_file is not None
    images = read_idx(test_file, IMAGES_MAGIC, limit=64)
    scores = {}
    for p in C.PRECISIONS:
        scorer = Scorer.load(out, precision=p)
        assert scorer.decoder.has_logits
        assert scorer.reference == every_precision.manifest.score_reference
        scores[p] = scorer.score(images, k=8, seed=0).iwae
    for p, limit in (("fp16", 0.05), ("int8", 1.0)):  # measured: 0.007 and 0.09 nats
        gap = float(np.abs(scores[p] - scores["fp32"]).max())
        assert gap <= limit, (p, gap)
