"""Decoder/Encoder loading checks (role, names, shapes, manifest SHA-256) and what they compute."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from runtime_graphs import build_decoder, build_encoder, quantize, write_manifest

from vae_runtime import (
    Decoder,
    Encoder,
    InvalidArgumentError,
    ModelFileError,
    NumericalError,
    reconstruct,
    sample_latents,
)


def test_decoder_loads_and_reads_latent_size_from_the_graph(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"])
    assert decoder.latent_dim == 2
    assert Decoder.load(graphs["decoder20"]).latent_dim == 20
    assert decoder.info.role == "decoder"


def test_decode_shape_range_and_sample_equals_decoded_prior(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder20"])
    images = decoder.sample(7, seed=3, temperature=0.5)
    assert images.shape == (7, 1, 28, 28)
    assert images.dtype == np.float32
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    np.testing.assert_array_equal(images, decoder.decode(sample_latents(7, 20, 3, 0.5)))
    assert decoder.sample(0).shape == (0, 1, 28, 28)


def test_iter_samples_streams_the_same_images(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder20"])
    whole = decoder.sample(50, seed=1)
    batches = list(decoder.iter_samples(50, seed=1, batch_size=16))
    assert [b.shape[0] for b in batches] == [16, 16, 16, 2]
    np.testing.assert_allclose(np.concatenate(batches), whole, atol=1e-6)


def test_decode_in_batches_matches_one_run(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder20"])
    z = sample_latents(40, 20, 0)
    np.testing.assert_allclose(decoder.decode(z, batch_size=7), decoder.decode(z), atol=1e-6)


def test_decode_rejects_wrong_latent_shape(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"])
    with pytest.raises(InvalidArgumentError, match=r"\(N, 2\)"):
        decoder.decode(np.zeros((3, 20), np.float32))


def test_encoder_accepts_uint8_and_float_images(graphs: dict[str, Path], make_digits) -> None:
    encoder = Encoder.load(graphs["encoder"])
    images, _ = make_digits(5, 0)
    mu, logvar = encoder.encode(images)
    assert mu.shape == logvar.shape == (5, 2)
    mu2, _ = encoder.encode(images.astype(np.float32)[:, None] / 255.0)
    np.testing.assert_allclose(mu, mu2, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="28, 28"):
        encoder.encode(np.zeros((2, 27, 28), np.uint8))


def test_reconstruct_decodes_the_means(graphs: dict[str, Path], make_digits) -> None:
    encoder, decoder = Encoder.load(graphs["encoder"]), Decoder.load(graphs["decoder"])
    images, _ = make_digits(4, 0)
    recon = reconstruct(encoder, decoder, images)
    np.testing.assert_array_equal(recon, decoder.decode(encoder.encode(images)[0]))


def test_latent_size_mismatch_is_refused(graphs: dict[str, Path], make_digits) -> None:
    encoder, decoder = Encoder.load(graphs["encoder20"]), Decoder.load(graphs["decoder"])
    with pytest.raises(ModelFileError, match=r"latent size 20 .* has 2"):
        reconstruct(encoder, decoder, make_digits(2, 0)[0])


@pytest.mark.parametrize(
    ("loader", "key", "message"),
    [
        (Decoder, "encoder", "is an mnist-vae encoder graph, expected a decoder"),
        (Encoder, "decoder", "is an mnist-vae decoder graph, expected an encoder"),
    ],
)
def test_wrong_role_says_expected_and_found(
    graphs: dict[str, Path], loader: type, key: str, message: str
) -> None:
    with pytest.raises(ModelFileError, match=message):
        loader.load(graphs[key])


def test_foreign_model_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "foreign.onnx"
    onnx.save(build_decoder(role=None), path)
    with pytest.raises(ModelFileError, match="not an mnist-vae graph"):
        Decoder.load(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a graph at all", b"\x08\x07\x12\x04junk" * 50],
    ids=["empty", "text", "junk"],
)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "decoder.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a loadable ONNX graph, expected an mnist-vae"):
        Decoder.load(path)


def test_truncated_graph(tmp_path: Path, graphs: dict[str, Path]) -> None:
    data = graphs["decoder"].read_bytes()
    path = tmp_path / "decoder.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a loadable ONNX graph"):
        Decoder.load(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        Decoder.load(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="is not a regular file"):
        Decoder.load(tmp_path)


def test_wrong_output_shape(tmp_path: Path) -> None:
    path = tmp_path / "flat.onnx"
    onnx.save(build_decoder(output_shape=["batch", 784]), path)
    with pytest.raises(
        ModelFileError, match=r"shape \[batch, 784\], expected \[batch, 1, 28, 28\]"
    ):
        Decoder.load(path)


def test_fixed_batch_axis_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    onnx.save(build_decoder(output_shape=[25, 1, 28, 28]), path)
    with pytest.raises(ModelFileError, match="dynamic batch axis"):
        Decoder.load(path)


def test_wrong_input_name(tmp_path: Path) -> None:
    path = tmp_path / "renamed.onnx"
    onnx.save(build_decoder(input_name="latent"), path)
    with pytest.raises(ModelFileError, match=r"input 'latent' .* expected 'z'"):
        Decoder.load(path)


def test_manifest_checksum_mismatch(tmp_path: Path, graphs: dict[str, Path]) -> None:
    shutil.copy(graphs["decoder"], tmp_path / "decoder.onnx")
    write_manifest(tmp_path, "decoder.onnx")
    Decoder.load(tmp_path / "decoder.onnx")  # matches: loads
    onnx.save(build_decoder(seed=9), tmp_path / "decoder.onnx")  # replaced after the export
    with pytest.raises(ModelFileError, match=r"SHA-256 .* does not match .* listed in"):
        Decoder.load(tmp_path / "decoder.onnx")


def test_a_graph_its_manifest_does_not_list_is_refused(
    tmp_path: Path, graphs: dict[str, Path]
) -> None:
    shutil.copy(graphs["decoder"], tmp_path / "decoder.onnx")
    shutil.copy(graphs["decoder"], tmp_path / "mine.onnx")
    write_manifest(tmp_path, "decoder.onnx")
    with pytest.raises(ModelFileError, match=r"mine.onnx: not listed in .*manifest.json"):
        Decoder.load(tmp_path / "mine.onnx")
    assert Decoder.load(tmp_path / "decoder.onnx").precision == "fp32"


def test_a_manifest_that_disagrees_on_role_or_size_is_refused(
    tmp_path: Path, graphs: dict[str, Path]
) -> None:
    shutil.copy(graphs["decoder"], tmp_path / "decoder.onnx")
    write_manifest(tmp_path, "decoder.onnx", latent_dim=7)
    with pytest.raises(ModelFileError, match="lists it as decoder of latent size 7"):
        Decoder.load(tmp_path / "decoder.onnx")


def test_an_int8_graph_loads_like_any_other_and_says_so(tmp_path: Path) -> None:
    fp32 = build_decoder(2, 64)
    quantize(fp32, tmp_path / "decoder.int8.onnx")
    write_manifest(tmp_path, "decoder.int8.onnx", precision="int8")
    decoder = Decoder.load(tmp_path / "decoder.int8.onnx")
    assert decoder.precision == "int8"
    assert decoder.entry is not None and decoder.entry.precision == "int8"
    (tmp_path / "fp32").mkdir()
    reference = Decoder.load(_saved(tmp_path / "fp32" / "decoder.onnx", fp32))
    assert reference.precision == "fp32" and reference.entry is None
    z = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32)
    assert np.abs(decoder.decode(z) - reference.decode(z)).max() < 0.05
    write_manifest(tmp_path, "decoder.int8.onnx")  # the manifest says fp32: not this file
    with pytest.raises(ModelFileError, match=r"an int8 graph, but .* lists it as fp32"):
        Decoder.load(tmp_path / "decoder.int8.onnx")


def _saved(path: Path, model: onnx.ModelProto) -> Path:
    onnx.save(model, path)
    return path


def test_unreadable_manifest(tmp_path: Path, graphs: dict[str, Path]) -> None:
    shutil.copy(graphs["decoder"], tmp_path / "decoder.onnx")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFileError, match=r"manifest\.json: not valid JSON"):
        Decoder.load(tmp_path / "decoder.onnx")


def test_nan_outputs_raise_numerical_error(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["nan_decoder"])
    with pytest.raises(NumericalError, match="NaN"):
        decoder.sample(3)


def _raw_decoder(pixels: np.ndarray) -> onnx.ModelProto:
    """The test decoder without its Sigmoid and with a zero output layer: every image it
    decodes is `pixels` (784,), as given, any sign or size."""
    model = build_decoder(2, 16)
    (node,) = (n for n in model.graph.node if n.op_type == "Sigmoid")
    node.op_type = "Identity"
    for init in model.graph.initializer:
        if init.name in ("w4", "b4"):
            value = np.zeros((784, 16)) if init.name == "w4" else pixels
            init.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), init.name))
    return model


@pytest.mark.parametrize("poison", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_any_non_finite_pixel_raises_numerical_error(tmp_path: Path, poison: float) -> None:
    pixels = np.full(784, 0.25)
    pixels[400] = poison  # one pixel among healthy ones
    decoder = Decoder.load(_saved(tmp_path / "decoder.onnx", _raw_decoder(pixels)))
    with pytest.raises(NumericalError, match="NaN or infinite"):
        decoder.decode(np.zeros((2, 2), np.float32))


@pytest.mark.parametrize(
    ("low", "high"), [(0.0, 1.0), (0.5, 1.0000001), (-1e-7, 0.5), (-3.0, 3.0), (-0.0, 1.0)]
)
def test_pixels_outside_zero_to_one_are_clipped(tmp_path: Path, low: float, high: float) -> None:
    pixels = np.linspace(np.float32(low), np.float32(high), 784, dtype=np.float32)
    decoder = Decoder.load(_saved(tmp_path / "decoder.onnx", _raw_decoder(pixels)))
    images = decoder.decode(np.zeros((3, 2), np.float32))
    assert images.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(
        images, np.broadcast_to(np.clip(pixels, 0, 1), (3, 784)).reshape(3, 1, 28, 28)
    )


def test_unknown_provider_lists_the_available_ones(graphs: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        Decoder.load(graphs["decoder"], providers=["NoSuchExecutionProvider"])
    message = str(info.value)
    assert "NoSuchExecutionProvider" in message
    assert all(p in message for p in ort.get_available_providers())


def test_providers_and_threads_are_applied(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"], providers=["CPUExecutionProvider"], threads=1)
    assert decoder._session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(InvalidArgumentError, match=r"threads must be in 1\.\."):
        Decoder.load(graphs["decoder"], threads=0)


def test_encoder_graph_checks_outputs(tmp_path: Path) -> None:
    model = build_encoder()
    model.graph.output[1].name = "sigma"
    model.graph.node[-1].output[0] = "sigma"
    path = tmp_path / "encoder.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelFileError, match=r"output 'sigma' .* expected 'logvar'"):
        Encoder.load(path)


def test_a_graph_that_loads_but_cannot_run_is_one_error(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"])

    class Broken:  # what onnxruntime raises when a node fails at run time (out of memory, ...)
        def run(self, *args: object) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status\ncode")

    decoder._session = Broken()  # type: ignore[assignment]
    decoder._views = {names: Broken() for names in decoder._views}  # type: ignore[misc]
    with pytest.raises(ModelFileError, match=r"running the graph failed: \[ONNXRuntimeError\]"):
        decoder.decode(np.zeros((3, 2), np.float32))


def test_odd_graph_files(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.onnx")
    with pytest.raises(ModelFileError, match="is not a regular file"):
        Decoder.load(tmp_path / "fifo.onnx")
    with pytest.raises(ModelFileError, match="File name too long"):
        Decoder.load(tmp_path / ("x" * 300))
    with open(tmp_path / "huge.onnx", "wb") as f:
        f.truncate((1 << 31) + 1)  # sparse: no disk used, and never read
    with pytest.raises(ModelFileError, match="larger than any ONNX graph"):
        Decoder.load(tmp_path / "huge.onnx")


def test_a_graph_with_an_extra_output_is_refused(tmp_path: Path) -> None:
    model = build_decoder()
    model.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
    onnx.save(model, tmp_path / "extra.onnx")
    with pytest.raises(ModelFileError, match=r"outputs \['image', 'h'\], expected"):
        Decoder.load(tmp_path / "extra.onnx")


def test_absurd_latents_are_blamed_not_the_graph(graphs: dict[str, Path]) -> None:
    decoder = Decoder.load(graphs["decoder"])
    huge = np.full((1, 2), 3e38, np.float32)  # overflows inside the graph
    with pytest.raises(InvalidArgumentError, match="far outside the prior"):
        decoder.decode(huge)
    with pytest.raises(InvalidArgumentError, match="NaN or infinite pixels"):
        Encoder.load(graphs["encoder"]).encode(np.full((1, 28, 28), np.nan, np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64])
def test_images_of_other_dtypes_are_refused(graphs: dict[str, Path], dtype: object) -> None:
    encoder = Encoder.load(graphs["encoder"])
    with pytest.raises(InvalidArgumentError, match=r"uint8 \(0-255\) or float \(0-1\)"):
        encoder.encode(np.zeros((1, 28, 28), dtype=dtype))


def test_a_decoder_with_logits_decodes_both_and_images_are_their_sigmoid(tmp_path: Path) -> None:
    onnx.save(build_decoder(3, 16, logits=True), tmp_path / "decoder.onnx")
    decoder = Decoder.load(tmp_path / "decoder.onnx")
    assert decoder.has_logits
    assert [t.name for t in decoder.outputs] == ["image", "logits"]
    z = sample_latents(9, 3, 0)
    logits = decoder.decode_logits(z, batch_size=4)
    assert logits.shape == (9, 1, 28, 28)
    assert logits.dtype == np.float32
    np.testing.assert_array_equal(logits, decoder.decode_logits(z))
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), decoder.decode(z), atol=1e-6)


def test_a_decoder_without_logits_still_decodes_and_refuses_logits_in_one_line(
    graphs: dict[str, Path],
) -> None:
    decoder = Decoder.load(graphs["decoder"])
    assert not decoder.has_logits
    assert [t.name for t in decoder.outputs] == ["image"]
    assert decoder.decode(np.zeros((2, 2), np.float32)).shape == (2, 1, 28, 28)
    with pytest.raises(ModelFileError, match="has no logits output") as info:
        decoder.decode_logits(np.zeros((2, 2), np.float32))
    assert "re-export it with this mnist-vae to score" in str(info.value)
    assert "\n" not in str(info.value)


def test_outputs_out_of_declared_order_are_refused(tmp_path: Path) -> None:
    model = build_decoder(logits=True)
    image, logits = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend([logits, image])
    onnx.save(model, tmp_path / "swapped.onnx")
    with pytest.raises(ModelFileError, match=r"'logits'.*expected 'image'"):
        Decoder.load(tmp_path / "swapped.onnx")


def test_logits_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    model = build_decoder(logits=True)  # logits left flat: (batch, 784)
    model.graph.node[-1].CopyFrom(onnx.helper.make_node("Identity", ["pre"], ["logits"]))
    model.graph.output[1].CopyFrom(
        onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 784])
    )
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(ModelFileError, match=r"output 'logits' has shape \[batch, 784\]"):
        Decoder.load(tmp_path / "bad.onnx")


def test_sessions_spin_between_runs_unless_asked_not_to(graphs: dict[str, Path]) -> None:
    key = "session.intra_op.allow_spinning"
    quiet = Decoder.load(graphs["decoder"], spinning=False)._session.get_session_options()
    assert quiet.get_session_config_entry(key) == "0"
    default = Decoder.load(graphs["decoder"])._session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        default.get_session_config_entry(key)  # onnxruntime's default: threads spin
