"""Graphs rewritten as they load (vae_runtime.rewrite): int8 graphs exact on every CPU and as fast
as its kernels allow, and the decoder's image-only view.

`signed_weights` must change only MatMulInteger's weights and zero points (each minus 128, as
int8), and a converted graph must compute the same bits as the file, under the options the
runtime loads every graph with: natively on a VNNI CPU, through onnxruntime's own u8 x u8
conversion (`session.x64quantprecision`) on an x86 CPU without VNNI. Either way these tests run
and assert on this CPU; none is skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import matmul_integer
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from runtime_graphs import build_decoder, build_encoder, quantize

from vae_runtime import rewrite
from vae_runtime.errors import ModelFileError
from vae_runtime.session import Decoder, Encoder, session_options


def _run(data: bytes, a: np.ndarray) -> np.ndarray:
    """The graph's first output on `a`, in a session made as the runtime makes them."""
    session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: a})[0]
    return out


def _initializers(data: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_from_string(data)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("int32_zero", [False, True], ids=["raw zero point", "int32_data"])
def test_weights_and_zero_points_become_int8_minus_128(int32_zero: bool) -> None:
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, (48, 10), dtype=np.uint8)
    zero = rng.integers(0, 256, (10,), dtype=np.uint8)
    data = matmul_integer(weights, zero, int32_zero=int32_zero)
    signed = rewrite.signed_weights(data)
    assert signed is not None
    before, after = _initializers(data), _initializers(signed)
    assert after["b"].dtype == after["bz"].dtype == np.int8
    np.testing.assert_array_equal(after["b"].astype(np.int16), weights.astype(np.int16) - 128)
    np.testing.assert_array_equal(after["bz"].astype(np.int16), zero.astype(np.int16) - 128)
    onnx.checker.check_model(onnx.load_from_string(signed), full_check=True)
    # The products (w - zp) are the same integers, so the outputs are the same bits.
    a = np.concatenate([np.full((4, 48), 255, np.uint8), rng.integers(0, 256, (28, 48), np.uint8)])
    want = a.astype(np.int32) @ (weights.astype(np.int32) - zero.astype(np.int32))
    np.testing.assert_array_equal(_run(signed, a), want)
    np.testing.assert_array_equal(_run(data, a), want)
    assert before.keys() == after.keys()


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 70),
    n=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    int32_zero=st.booleans(),
)
def test_converted_matmuls_equal_numpy_on_this_cpu(
    k: int, n: int, seed: int, int32_zero: bool
) -> None:
    """Any uint8 weights and zero points, converted, give numpy's exact int32 product on this
    CPU (with VNNI natively, without it through the session option)."""
    rng = np.random.default_rng(seed)
    weights = rng.integers(0, 256, (k, n), dtype=np.uint8)
    weights[:, 0] = 255  # the column most likely to overflow 16-bit pair sums, if anything did
    zero = rng.integers(0, 256, (n,), dtype=np.uint8)
    signed = rewrite.signed_weights(matmul_integer(weights, zero, int32_zero=int32_zero))
    assert signed is not None
    a = np.concatenate([np.full((3, k), 255, np.uint8), rng.integers(0, 256, (5, k), np.uint8)])
    want = a.astype(np.int32) @ (weights.astype(np.int32) - zero.astype(np.int32))
    np.testing.assert_array_equal(_run(signed, a), want)


def test_signed_weights_that_saturate_without_vnni_are_exact_as_the_runtime_loads_them() -> None:
    """A graph with signed weights (int8 graphs exported before 2026-12-05, or foreign ones):
    pairs of 255 x 127 overflow 16 bits on x86 without VNNI unless the session option is set.
    The runtime's options make it exact on this CPU, whichever it is."""
    k, n = 64, 4
    weights = np.full((k, n), 127, np.int8)
    weights[:, 1] = -127
    data = matmul_integer(weights, np.zeros(n, np.int8))
    a = np.full((2, k), 255, np.uint8)
    want = a.astype(np.int32) @ weights.astype(np.int32)
    np.testing.assert_array_equal(_run(data, a), want)
    assert rewrite.signed_weights(data) is None  # int8 already: nothing to convert


def test_graphs_it_does_not_handle_are_left_as_they_are() -> None:
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    zero = rng.integers(0, 256, (3,), dtype=np.uint8)
    assert rewrite.signed_weights(matmul_integer(weights, zero)) is not None  # the control
    assert (
        rewrite.signed_weights(matmul_integer(weights, None)) is None
    )  # zero point 0 has no int8 twin
    assert rewrite.signed_weights(matmul_integer(weights, zero, extra_reader=True)) is None
    assert rewrite.signed_weights(matmul_integer(weights, zero, declared=True)) is None
    assert rewrite.signed_weights(b"not a protobuf \xff\xff\xff") is None
    assert rewrite.signed_weights(b"") is None
    data = matmul_integer(weights, zero)
    assert rewrite.signed_weights(data[:-3]) is None  # truncated


def test_external_data_is_left_alone(tmp_path: Path) -> None:
    weights = np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)
    model = onnx.load_from_string(matmul_integer(weights, np.full(64, 3, np.uint8)))
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, size_threshold=16)
    data = (tmp_path / "m.onnx").read_bytes()
    assert rewrite.signed_weights(data) is None


def test_a_float_graph_passes_through_untouched(graphs: dict[str, Path]) -> None:
    data = graphs["decoder"].read_bytes()
    assert rewrite.signed_weights(data) is None
    assert rewrite.prepare(data) is data


@pytest.mark.parametrize("role", ["decoder", "encoder"])
def test_a_quantized_pair_loads_converted_and_computes_the_files_bits(
    role: str, tmp_path: Path, templates: np.ndarray
) -> None:
    """Decoder.load / Encoder.load of an int8 graph: on this CPU the outputs equal those of a
    session of the file's own bytes, bit for bit; only the two weight tensors of each
    quantized layer changed type."""
    model = build_decoder(2, 64, templates=templates) if role == "decoder" else build_encoder(2, 64)
    path = quantize(model, tmp_path / f"{role}.int8.onnx")
    data = path.read_bytes()
    signed = rewrite.signed_weights(data)
    assert signed is not None
    changed = {
        name
        for name, values in _initializers(signed).items()
        if values.dtype != _initializers(data)[name].dtype
    }
    matmuls = [n for n in onnx.load(path).graph.node if n.op_type == "MatMulInteger"]
    assert changed == {name for n in matmuls for name in (n.input[1], n.input[3])}
    assert rewrite.prepare(data) == (signed if rewrite.vnni() else data)  # this CPU's choice
    rng = np.random.default_rng(3)
    if role == "decoder":
        z = rng.standard_normal((64, 2)).astype(np.float32)
        got = Decoder.load(path).decode(z)
        want = _session_output(data, "z", z)
    else:
        x = rng.uniform(0, 1, (64, 1, 28, 28)).astype(np.float32)
        got = Encoder.load(path).encode(x)[0]
        want = _session_output(data, "image", x)
    np.testing.assert_array_equal(got, want)


def _session_output(data: bytes, name: str, value: np.ndarray) -> np.ndarray:
    """The first output of the file's own bytes (no conversion) under the runtime's options."""
    session = ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out: np.ndarray = session.run([names[0]], {name: value})[0]
    return out


def test_which_cpus_get_which(monkeypatch: pytest.MonkeyPatch) -> None:
    """x86 with VNNI: converted, no option; x86 without: the option; ARM: neither."""
    key = "session.x64quantprecision"
    data = matmul_integer(np.ones((4, 2), np.uint8), np.ones(2, np.uint8))
    monkeypatch.setattr(rewrite.platform, "machine", lambda: "x86_64")
    assert rewrite.vnni(frozenset({"avx2", "avx512_vnni"}))
    assert rewrite.vnni(frozenset({"avx2", "avx_vnni"}))
    assert not rewrite.vnni(frozenset({"avx2", "avx512f", "avx512bw"}))
    monkeypatch.setattr(rewrite, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert session_options().get_session_config_entry(key) == "1"
    assert rewrite.prepare(data) is data  # u8 x s8 would not be exact here
    monkeypatch.setattr(rewrite, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert key not in _config(session_options())  # it would undo the conversion
    assert rewrite.prepare(data) == rewrite.signed_weights(data) != data
    monkeypatch.setattr(rewrite.platform, "machine", lambda: "aarch64")
    assert not rewrite.vnni(frozenset({"avx512_vnni"}))
    assert key not in _config(session_options())
    assert rewrite.prepare(data) is data


def _config(options: ort.SessionOptions) -> set[str]:
    """The config keys set on `options` (onnxruntime raises for a key that is not set)."""
    keys = set()
    for key in ("session.x64quantprecision", "session.intra_op.allow_spinning"):
        try:
            options.get_session_config_entry(key)
        except Exception:  # onnxruntime's own exception type for a missing key
            continue
        keys.add(key)
    return keys


def _outputs(data: bytes) -> list[str]:
    return [o.name for o in onnx.load_from_string(data).graph.output]


def test_without_outputs_drops_only_the_declaration() -> None:
    model = build_decoder(2, 16, logits=True)
    data = model.SerializeToString()
    view = rewrite.without_outputs(data, {"logits"})
    assert view is not None and _outputs(view) == ["image"]
    slim = onnx.load_from_string(view)
    assert slim.graph.node == model.graph.node  # the nodes that make it stay
    assert slim.graph.initializer == model.graph.initializer
    assert slim.metadata_props == model.metadata_props
    assert rewrite.without_outputs(data, {"no such output"}) is None
    assert rewrite.without_outputs(build_decoder(2, 16).SerializeToString(), {"logits"}) is None
    assert rewrite.without_outputs(b"\xff\xff not a graph", {"logits"}) is None


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_decode_runs_an_image_only_view_with_the_full_graphs_bits(
    precision: str, tmp_path: Path, templates: np.ndarray
) -> None:
    """A decoder with logits decodes through a second session without them (no copy of the
    logits per run), and decode_logits through a third without the images: the same bits as
    the full graph gives, which still runs whatever fetches both."""
    path = tmp_path / "decoder.onnx"
    model = build_decoder(2, 64, templates=templates, logits=True)
    if precision == "int8":
        quantize(model, path)
    else:
        onnx.save(model, path)
    decoder = Decoder.load(path)
    assert decoder._views == {}  # built on first use
    z = np.random.default_rng(4).standard_normal((300, 2)).astype(np.float32)
    image, logits = decoder._session.run(None, {"z": z})
    np.testing.assert_array_equal(decoder.decode(z), image)
    np.testing.assert_array_equal(decoder.decode_logits(z), logits)
    views = decoder._views
    assert [o.name for o in views[("image",)].get_outputs()] == ["image"]
    assert [o.name for o in views[("logits",)].get_outputs()] == ["logits"]
    assert [o.name for o in decoder._session.get_outputs()] == ["image", "logits"]
    calls: list[str] = []
    decoder._session = _Spy("full", decoder._session, calls)  # type: ignore[assignment]
    for names in list(views):
        views[names] = _Spy(names[0], views[names], calls)  # type: ignore[assignment]
    decoder.decode(z[:5])
    decoder.decode_logits(z[:5])
    decoder._run({"z": z[:5]}, ("image", "logits"))  # not a view: the full graph
    assert calls == ["image", "logits", "full"]


class _Spy:
    """A session that records which one ran."""

    def __init__(self, label: str, session: ort.InferenceSession, calls: list[str]) -> None:
        self.label, self.session, self.calls = label, session, calls

    def run(self, *args: Any) -> Any:
        self.calls.append(self.label)
        return self.session.run(*args)


def test_a_decoder_without_logits_has_no_view(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"])
    decoder.decode(np.zeros((2, 2), np.float32))
    assert not decoder.has_logits and decoder._views == {("image",): decoder._session}
    encoder = Encoder.load(graphs["encoder"])
    encoder.encode(np.zeros((2, 28, 28), np.uint8))
    assert encoder._views == {}


def test_a_rewrite_onnxruntime_refuses_falls_back_to_the_file(
    graphs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Should a rewrite ever make a graph onnxruntime cannot load, the file itself is loaded
    (exact, only slower), and a broken file is still refused in one line."""
    monkeypatch.setattr(rewrite, "prepare", lambda data: b"\x08\x07:\x02\x08\x00broken")
    decoder = Decoder.load(graphs["decoder"])
    z = np.zeros((2, 2), np.float32)
    np.testing.assert_array_equal(
        decoder.decode(z), _session_output(graphs["decoder"].read_bytes(), "z", z)
    )
    broken = tmp_path / "garbage.onnx"
    broken.write_bytes(b"not a graph at all")
    monkeypatch.setattr(rewrite, "prepare", lambda data: data)
    with pytest.raises(ModelFileError, match="not a loadable ONNX graph"):
        Decoder.load(broken)
