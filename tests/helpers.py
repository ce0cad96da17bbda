"""Plain helpers every part of the suite shares (conftest.py holds the fixtures): synthetic
digits and MNIST folders, and the assertions of the one-line error promise."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vae_runtime.idx import write_idx


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as raw IDX bytes (header, then the data in C order)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def outcome(result: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a CliRunner Result or a subprocess.CompletedProcess."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    out, err = result.stdout, result.stderr
    if isinstance(out, bytes):
        out, err = out.decode(), err.decode()
    return code, out or "", err or ""


def expect_error(result: Any, code: int, pattern: str = "") -> str:
    """The command failed the way every mnist-vae command promises: exit `code`, exactly one
    line on stderr, `prog: error: ...` matching `pattern` (a regex), no traceback anywhere, no
    escape codes. Returns the line."""
    exit_code, out, err = outcome(result)
    lines = err.strip().splitlines()
    assert exit_code == code, f"exit {exit_code}, expected {code}: {out}{err}"
    assert len(lines) == 1, err
    assert re.match(r"^[\w-]+: error: \S", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err and "internal error" not in err
    assert "\x1b[" not in out + err
    return lines[0]


def expect_interrupted(result: Any, code: int) -> str:
    """Stopped by a signal as promised: exit `code` (130 SIGINT, 143 SIGTERM), one line on stderr
    saying what was kept, no traceback. Returns the line."""
    exit_code, out, err = outcome(result)
    lines = err.strip().splitlines()
    assert exit_code == code, f"exit {exit_code}, expected {code}: {out}{err}"
    assert len(lines) == 1, err
    assert re.match(r"^[\w-]+: interrupted by SIG(INT|TERM); ", lines[0]), lines[0]
    assert "Traceback" not in out + err and "\x1b[" not in out + err
    return lines[0]


def render_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` digit-like images: a glyph 0-9 at a random size, offset and slant, blurred like a pen
    stroke. Returns uint8 images (n, 28, 28) (white ink on black, like MNIST) and labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    fonts = {size: ImageFont.load_default(size=size) for size in (18, 20, 22)}
    for i, label in enumerate(labels):
        canvas = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(canvas)
        font = fonts[int(rng.choice(list(fonts)))]
        dx, dy = rng.integers(-2, 3, size=2)
        draw.text(
            (14 + dx, 14 + dy),
            str(label),
            fill=255,
            font=font,
            anchor="mm",
            stroke_width=int(rng.integers(0, 2)),
            stroke_fill=255,
        )
        shear = float(rng.uniform(-0.25, 0.25))
        canvas = canvas.transform(
            (28, 28), Image.Transform.AFFINE, (1, shear, -14 * shear, 0, 1, 0)
        )
        images[i] = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)))
    return images, labels


def write_mnist_dir(directory: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A folder laid out like MNIST's download (four gzip IDX files) holding synthetic digits."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = render_digits(n, s)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, hidden ones included: a file's bytes, or the entry's kind."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            found[key] = path.read_bytes()
        elif path.is_dir():
            found[key] = "folder"
        else:
            found[key] = "special"
    return found


def matmul_integer(
    weights: np.ndarray,
    zero: np.ndarray | None,
    *,
    int32_zero: bool = False,
    extra_reader: bool = False,
    declared: bool = False,
) -> bytes:
    """One MatMulInteger (a: uint8 [m, k]) with these weights and zero point, serialized;
    `int32_zero` stores the zero point as onnxruntime's quantizer does, `extra_reader` adds a
    node that reads the weights too, `declared` lists them among the graph's inputs."""
    from onnx import TensorProto, helper, numpy_helper

    k, n = weights.shape
    b = numpy_helper.from_array(weights, "b")
    inits = [b]
    inputs = ["a", "b", "", "bz" if zero is not None else ""]
    if zero is not None:
        bz = numpy_helper.from_array(zero, "bz")
        if int32_zero:  # as onnxruntime's quantizer stores it: int32_data, not raw_data
            bz = helper.make_tensor("bz", TensorProto.UINT8, zero.shape, zero.tolist())
        inits.append(bz)
    nodes = [helper.make_node("MatMulInteger", inputs[: 4 if zero is not None else 2], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.INT32, ["m", n])]
    if extra_reader:
        nodes.append(helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.INT32))
        outputs.append(helper.make_tensor_value_info("b32", TensorProto.INT32, [k, n]))
    graph_inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, ["m", k])]
    if declared:  # IR 3 style: initializers listed as graph inputs too
        graph_inputs.append(helper.make_tensor_value_info("b", TensorProto.UINT8, [k, n]))
    graph = helper.make_graph(nodes, "one_matmul", graph_inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()
