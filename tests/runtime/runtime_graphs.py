"""Small encoder/decoder graphs built with onnx.helper from numpy weights: no torch, no exporter.

The decoder's output layer holds rendered digit templates, so its samples look like blends of
digits (handy when looking at the PNGs); the encoder is random. Both follow the contract's
names, shapes and metadata unless a test asks for a broken variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vae_runtime.contract import (
    BATCH_AXIS,
    DECODER_INPUT,
    DECODER_LOGITS,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    IMAGE_PIXELS,
    MANIFEST_FILE,
    META_PRECISION,
    FileEntry,
    Manifest,
    build_metadata,
)

OPSET = 17


def _tensor(name: str, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _finish(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    metadata: dict[str, str] | None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "vae",
        inputs,
        outputs,
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    if metadata:
        helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def _meta(role: str, latent_dim: int) -> dict[str, str]:
    return build_metadata(
        role, latent_dim, producer_version="test", source={"file": "none"}, training={}
    )


def build_decoder(
    latent_dim: int = 2,
    hidden: int = 16,
    *,
    seed: int = 0,
    templates: np.ndarray | None = None,
    nan: bool = False,
    role: str | None = "decoder",
    output_shape: list[Any] | None = None,
    input_name: str = DECODER_INPUT,
    logits: bool = False,
) -> onnx.ModelProto:
    """z (batch, d) -> Gemm -> Relu -> Gemm -> Sigmoid -> Reshape -> image (batch, 1, 28, 28).
    `templates` uint8 (k, 28, 28) shape the output layer; `nan` poisons one bias; `role` None
    drops the metadata (a foreign model); `logits` adds the optional second output, the
    pre-sigmoid values (batch, 1, 28, 28), as graphs exported with it have."""
    rng = np.random.default_rng(seed)
    w3 = rng.normal(0, 1 / np.sqrt(latent_dim), (hidden, latent_dim)).astype(np.float32)
    b3 = rng.normal(0, 0.1, hidden).astype(np.float32)
    if templates is None:
        w4 = rng.normal(0, 0.3, (IMAGE_PIXELS, hidden))
    else:  # each hidden unit paints one digit template
        t = templates.reshape(len(templates), -1).astype(np.float64) / 255.0
        w4 = np.stack([t[i % len(t)] for i in range(hidden)], axis=1) * 3.0
    b4 = np.full(IMAGE_PIXELS, -4.0, dtype=np.float32)
    if nan:
        b4[100] = np.nan
    nodes = [
        helper.make_node("Gemm", [input_name, "w3", "b3"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w4", "b4"], ["pre"], transB=1),
        helper.make_node("Sigmoid", ["pre"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "shape"], [DECODER_OUTPUT]),
    ]
    inits = {
        "w3": w3,
        "b3": b3,
        "w4": w4.astype(np.float32),
        "b4": b4,
        "shape": np.array([-1, 1, 28, 28], dtype=np.int64),
    }
    out_shape = output_shape or [BATCH_AXIS, 1, 28, 28]
    if output_shape is not None and len(output_shape) == 2:
        nodes[-1] = helper.make_node("Identity", ["pixels"], [DECODER_OUTPUT])
    outputs = [_tensor(DECODER_OUTPUT, out_shape)]
    if logits:
        nodes.append(helper.make_node("Reshape", ["pre", "shape"], [DECODER_LOGITS]))
        outputs.append(_tensor(DECODER_LOGITS, [BATCH_AXIS, 1, 28, 28]))
    return _finish(
        nodes,
        inits,
        [_tensor(input_name, [BATCH_AXIS, latent_dim])],
        outputs,
        _meta(role, latent_dim) if role else None,
    )


def build_encoder(latent_dim: int = 2, hidden: int = 16, *, seed: int = 1) -> onnx.ModelProto:
    """image (batch, 1, 28, 28) -> Flatten -> Gemm -> Relu -> Gemm (mu), Gemm (logvar)."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(0, 0.05, (hidden, IMAGE_PIXELS)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "wm": rng.normal(0, 0.5, (latent_dim, hidden)).astype(np.float32),
        "bm": np.zeros(latent_dim, np.float32),
        "wl": rng.normal(0, 0.1, (latent_dim, hidden)).astype(np.float32),
        "bl": np.full(latent_dim, -1.0, np.float32),
    }
    mu, logvar = ENCODER_OUTPUTS
    nodes = [
        helper.make_node("Flatten", [ENCODER_INPUT], ["x"], axis=1),
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "wm", "bm"], [mu], transB=1),
        helper.make_node("Gemm", ["hr", "wl", "bl"], [logvar], transB=1),
    ]
    return _finish(
        nodes,
        inits,
        [_tensor(ENCODER_INPUT, [BATCH_AXIS, 1, 28, 28])],
        [_tensor(mu, [BATCH_AXIS, latent_dim]), _tensor(logvar, [BATCH_AXIS, latent_dim])],
        _meta("encoder", latent_dim),
    )


def write_manifest(
    directory: Path, *names: str, latent_dim: int = 2, precision: str = "fp32"
) -> Path:
    """A manifest.json listing `names` (files in `directory`, their role read from the name)."""
    files = {
        n: FileEntry.of(
            (directory / n).read_bytes(), "encoder" if "encoder" in n else "decoder", precision
        )
        for n in names
    }
    path = directory / MANIFEST_FILE
    path.write_bytes(Manifest(files=files, latent_dim=latent_dim).to_bytes())
    return path


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A genuine 1-bit black PNG of any size, streamed through zlib so that even 50,000 x 50,000
    (312 MB of pixels, a 300 KB file: a decompression bomb) never sits in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = max(1, (1 << 22) // len(row))
    packer = zlib.compressobj(9)
    idat = []
    for start in range(0, height, rows_per_block):
        idat.append(packer.compress(row * min(rows_per_block, height - start)))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )
    return path


def quantize(model: onnx.ModelProto, path: Path) -> Path:
    """`model` through onnxruntime's dynamic int8 quantization, marked int8, saved at `path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, path, weight_type=QuantType.QUInt8)  # as vae-export ships
    int8 = onnx.load(path)
    assert any(n.op_type == "MatMulInteger" for n in int8.graph.node)  # really quantized
    props = {p.key: p.value for p in int8.metadata_props} | {META_PRECISION: "int8"}
    del int8.metadata_props[:]
    onnx.helper.set_model_props(int8, props)
    onnx.save(int8, path)
    return path
