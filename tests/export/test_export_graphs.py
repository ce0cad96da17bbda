"""What the exporter writes: lean valid graphs, metadata and a manifest the runtime reads back."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest

from vae_export import DEFAULT_OPSET, MIN_OPSET, graphs
from vae_export.graphs import ExportError, declared_signature, io_signature
from vae_export.onnx_export import export_checkpoint
from vae_export.verify import ATOL
from vae_runtime import contract as C
from vae_runtime.fileio import sha256_file

if TYPE_CHECKING:  # the fixture's type, defined in tests/export/conftest.py
    from conftest import Exported

OPERATORS = {
    C.ENCODER_FILE: ["Reshape", "Gemm", "Relu", "Gemm", "Gemm"],
    C.DECODER_FILE: ["Gemm", "Relu", "Gemm", "Reshape", "Sigmoid"],  # logits, then their sigmoid
}
WEIGHTS = {
    C.ENCODER_FILE: {"fc1", "fc2_mu", "fc2_logvar"},
    C.DECODER_FILE: {"fc3", "fc4"},
}


def _graphs(ex: Exported) -> dict[str, onnx.ModelProto]:
    return {
        C.ENCODER_FILE: onnx.load(str(ex.result.encoder), load_external_data=False),
        C.DECODER_FILE: onnx.load(str(ex.result.decoder), load_external_data=False),
    }


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graphs_are_lean_self_contained_and_pass_the_full_check(exported: Exported) -> None:
    for name, model in _graphs(exported).items():
        onnx.checker.check_model(model, full_check=True)
        assert [n.op_type for n in model.graph.node] == OPERATORS[name], name
        assert [o.version for o in model.opset_import if o.domain == ""] == [DEFAULT_OPSET]
        assert not model.graph.value_info
        assert not model.functions
        assert all(not n.doc_string and not n.metadata_props for n in model.graph.node)
        weights = {t.name.split(".")[0] for t in model.graph.initializer} - {"reshape"}
        assert weights == WEIGHTS[name]
        used = {i for n in model.graph.node for i in n.input}
        assert all(t.name in used for t in model.graph.initializer)
        assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
        assert model.producer_name == C.PRODUCER


def test_graph_inputs_and_outputs_follow_the_contract(exported: Exported) -> None:
    """Names, dtypes and shapes of both graphs: the contract's declarations (INTERFACES), with
    the dynamic batch axis first."""
    d = exported.model.config.latent_dim
    protos = _graphs(exported)
    for role, interface in C.INTERFACES.items():
        graph = protos[C.graph_file(role)].graph
        for declared, actual in (
            (interface.inputs, graph.input),
            (interface.outputs, graph.output),
        ):
            assert [v.name for v in actual] == [t.name for t in declared], role
            for t, v in zip(declared, actual, strict=True):
                elem = v.type.tensor_type.elem_type
                assert onnx.helper.tensor_dtype_to_np_dtype(elem) == np.dtype(interface.dtype)
                assert _dims(v) == [C.BATCH_AXIS, *t.shape(d)], (role, t.name)
    # The declarations themselves are the documented contract (DESIGN.md).
    assert [(t.name, t.shape(d)) for t in C.DECODER.inputs] == [("z", (d,))]
    assert [(t.name, t.shape(d), t.optional) for t in C.DECODER.outputs] == [
        ("image", (1, 28, 28), False),
        ("logits", (1, 28, 28), True),  # exported always; graphs from before lack it
    ]
    assert exported.decoder.has_logits
    assert [(t.name, t.shape(d)) for t in C.ENCODER.inputs] == [("image", (1, 28, 28))]
    assert [(t.name, t.shape(d)) for t in C.ENCODER.outputs] == [("mu", (d,)), ("logvar", (d,))]


def test_the_signature_the_exporter_checks_is_the_declared_one(exported: Exported) -> None:
    """graphs._check compares each graph with its role's interface: a renamed or reshaped
    output is an ExportError naming it, not a graph the runtime refuses later."""
    d = exported.model.config.latent_dim
    for role, interface in C.INTERFACES.items():
        model = _graphs(exported)[C.graph_file(role)]
        assert io_signature(model) == declared_signature(interface, d)
        old = model.graph.output[0].name  # renamed where it is made too: onnx.checker passes
        model.graph.output[0].name = "renamed"
        for node in model.graph.node:
            node.output[:] = ["renamed" if n == old else n for n in node.output]
        onnx.checker.check_model(model, full_check=True)
        with pytest.raises(ExportError, match=f"{C.graph_file(role)}: outputs .*'renamed'"):
            graphs._check(model, C.graph_file(role), interface, d)


def test_metadata_round_trips_through_the_runtime_parser(exported: Exported) -> None:
    for (name, model), role in zip(_graphs(exported).items(), C.ROLES, strict=True):
        props = {p.key: p.value for p in model.metadata_props}
        info = C.parse_metadata(props, name)
        assert info.role == role
        assert info.latent_dim == exported.model.config.latent_dim
        assert info.format_version == C.FORMAT_VERSION
        assert info.producer == C.PRODUCER
        assert info.source == {
            "checkpoint": exported.checkpoint.name,
            "sha256": sha256_file(exported.checkpoint),
        }
        assert info.training["epochs"] == 1
        assert info.training["test_loss"] > 0


def test_manifest_round_trips_and_its_checksums_match_the_files(exported: Exported) -> None:
    manifest = json.loads(exported.result.manifest_path.read_text(encoding="utf-8"))
    assert C.Manifest.load(exported.result.manifest_path) == dataclasses.replace(
        exported.result.manifest, path=exported.result.manifest_path
    )
    assert manifest[C.MANIFEST_KEY_FORMAT] == C.MANIFEST_FORMAT
    assert manifest[C.MANIFEST_KEY_VERSION] == C.FORMAT_VERSION
    files = manifest[C.MANIFEST_FILES]
    assert set(files) == {C.ENCODER_FILE, C.DECODER_FILE}
    for path, role in ((exported.result.encoder, "encoder"), (exported.result.decoder, "decoder")):
        assert files[path.name][C.MANIFEST_SHA256] == sha256_file(path)
        assert files[path.name][C.MANIFEST_BYTES] == path.stat().st_size
        assert files[path.name]["role"] == role
        assert files[path.name]["precision"] == "fp32"
    assert manifest[C.MANIFEST_CHECKPOINT] == {
        "name": exported.checkpoint.name,
        C.MANIFEST_SHA256: sha256_file(exported.checkpoint),
    }
    assert manifest[C.MANIFEST_LATENT_DIM] == exported.model.config.latent_dim
    assert manifest[C.MANIFEST_OPSET] == DEFAULT_OPSET
    assert {"torch", "onnx", "onnxruntime", C.PRODUCER} <= set(manifest["versions"])
    rows = manifest["verification"]["comparisons"]
    assert manifest["verification"]["passed"] is True
    assert {(r["graph"], r["output"]) for r in rows} == {
        ("encoder", "mu"),
        ("encoder", "logvar"),
        ("decoder", "image"),
        ("decoder", "logits"),
    }
    assert all(r["passed"] for r in rows)
    # absolute differences within ATOL, but for the logits' relative term (|l| ~ 10 at most)
    assert all(0 <= r["max_abs"] <= ATOL + r["rtol"] * 50 for r in rows)
    assert {r["output"] for r in rows if r["rtol"]} == {"logits"}


def test_the_lowest_opset_exports_and_verifies(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    opset = MIN_OPSET  # below the exporter's native 18: goes through onnx's version converter
    result = export_checkpoint(checkpoints["tiny"], tmp_path, opset=opset)
    assert result.report.passed
    model = onnx.load(str(result.decoder))
    assert [o.version for o in model.opset_import if o.domain == ""] == [opset]
    assert result.manifest.details[C.MANIFEST_OPSET] == opset
