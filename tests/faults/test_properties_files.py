"""The Python API that reads and writes files (PNG and GIF, image and IDX inputs, the .npy
writer, Outputs), loads graphs and builds settings, called with drawn arguments: a correct
result or a `VaeError`, never a bare numpy/onnxruntime/torch exception."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import tree
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from properties import (
    LATENT,
    NON_ARRAYS,
    PICTURE_SHAPES,
    Kit,
    _is_int,
    _is_real,
    _names,
    _png_header,
    arrays,
    attempt,
    bounded,
    ints_or_junk,
    mostly,
    reals_or_junk,
    refused,
    words,
)

from vae_runtime import contract
from vae_runtime.errors import VaeError
from vae_runtime.fileio import Outputs
from vae_runtime.idx import IMAGES_MAGIC, read_idx, write_idx
from vae_runtime.images import (
    gif_bytes,
    png_bytes,
    save_gif,
    save_png,
)
from vae_runtime.inputs import load_inputs, read_image
from vae_runtime.npy import NpyWriter
from vae_runtime.session import Decoder, Encoder, cpu_count, session_options
from vae_train.checkpoint import MAX_EPOCH
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings


def _gif_frames(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        frames = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            frames.append(np.asarray(image.convert("L")))
        return frames


def _distinct(frames: np.ndarray) -> list[np.ndarray]:
    """Frames with consecutive repeats merged (GIF writers merge them, adding up durations)."""
    kept: list[np.ndarray] = []
    for frame in frames:
        if not kept or not np.array_equal(kept[-1], frame):
            kept.append(frame)
    return kept


def _writer_folder(kit: Kit) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="save-", dir=kit.scratch))
    (folder / "keep.png").write_bytes(b"an older picture\n")
    (folder / "sub").mkdir()
    (folder / "link.png").symlink_to("keep.png")
    os.mkfifo(folder / "fifo")
    return folder


@bounded(60)
@given(
    how=st.sampled_from(["png_bytes", "gif_bytes", "save_png", "save_gif"]),
    pixels=mostly(
        arrays(
            st.one_of(
                st.tuples(st.integers(1, 6), st.integers(1, 6)),
                st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
            ),
            dtypes=[np.uint8],
        ),
        st.one_of(arrays(PICTURE_SHAPES), NON_ARRAYS),
        4,
    ),
    frame_ms=mostly(st.integers(1, 200), ints_or_junk((-1, 200), refused_above=60_000), 4),
    loop=st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None])),
    target=mostly(
        st.sampled_from(["a.png", "keep.png"]),
        st.sampled_from(["sub", "missing/a.png", "fifo", "link.png", ""]),
        4,
    ),
)
def test_png_and_gif(
    kit: Kit, how: str, pixels: Any, frame_ms: Any, loop: Any, target: str
) -> None:
    """png_bytes/save_png: a greyscale PNG of exactly these pixels; gif_bytes/save_gif: a GIF
    whose frames are these (consecutive repeats merged), looping when asked; a save replaces
    only a regular file or nothing, else a VaeError and the folder as it was."""
    folder = _writer_folder(kit)
    try:
        path = folder / target
        calls: dict[str, Callable[[], Any]] = {
            "png_bytes": lambda: png_bytes(pixels),
            "gif_bytes": lambda: gif_bytes(pixels, frame_ms=frame_ms, loop=loop),
            "save_png": lambda: save_png(pixels, path),
            "save_gif": lambda: save_gif(pixels, path, frame_ms=frame_ms, loop=loop),
        }
        before = tree(folder)
        result = attempt(calls[how])
        array = np.asarray(pixels)
        gif = "gif" in how
        if gif:
            valid = (
                _is_int(frame_ms, 1, 60_000)
                and array.dtype == np.uint8
                and array.ndim == 3
                and 0 not in array.shape
            )
        else:
            valid = array.dtype == np.uint8 and array.ndim == 2 and 0 not in array.shape
        if how.startswith("save"):
            valid = valid and target in ("a.png", "keep.png")
        if not valid:
            assert refused(result)
            assert tree(folder) == before
            return
        assert not refused(result), result.error
        if how.startswith("save"):
            data = path.read_bytes()
            assert {k for k, v in tree(folder).items() if before.get(k) != v} == {target}
        else:
            data = result.value
        if gif:
            frames = _gif_frames(data)
            assert len(frames) == len(_distinct(array))
            for got, want in zip(frames, _distinct(array), strict=True):
                np.testing.assert_array_equal(got, want)
            with Image.open(io.BytesIO(data)) as image:
                assert ("loop" in image.info) == bool(loop)
        else:
            with Image.open(io.BytesIO(data)) as image:
                assert image.mode == "L"
                np.testing.assert_array_equal(np.asarray(image), array)
    finally:
        shutil.rmtree(folder)


POOL_NAMES = _names("digit.png photo.png grey16.png digits.gz small.idx two.idx wrong.idx.gz")
POOL_NAMES += _names(
    "labels.idx.gz empty.png note.txt truncated.png bomb.png folder fifo missing.png"
)


def _reference_file(path: Path) -> np.ndarray | None:
    """What one input file holds as images (N, 28, 28), or None if it is not one; never opens a
    FIFO (stat first)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        start = path.read_bytes()[:3]
        if start.startswith((b"\x1f\x8b", b"\x00\x00\x08")):
            images = read_idx(path, IMAGES_MAGIC)
            ok = images.ndim == 3 and images.shape[1:] == (28, 28) and images.shape[0] > 0
            return images if ok else None
        return read_image(path)[None]
    except (VaeError, OSError):
        return None


def _inode(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names (through symlinks), None when absent."""
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return st_.st_dev, st_.st_ino


@bounded(60)
@given(
    names=mostly(
        st.lists(st.sampled_from([*POOL_NAMES[:4], "two.idx"]), min_size=1, max_size=4),
        st.lists(st.sampled_from(POOL_NAMES), max_size=4),
    ),
    as_str=st.booleans(),
    as_tuple=st.booleans(),
    limit=mostly(st.integers(1, 70), ints_or_junk((-1, 70))),
)
def test_load_inputs(kit: Kit, names: list[str], as_str: bool, as_tuple: bool, limit: Any) -> None:
    """load_inputs: the images of the files in order, at most `limit`, files past the limit not
    read at all; any unreadable file before the limit is a VaeError."""
    paths: Sequence[Path | str] = [str(kit.pool / n) if as_str else kit.pool / n for n in names]
    if as_tuple:
        paths = tuple(paths)
    result = attempt(lambda: load_inputs(paths, limit))
    expected: np.ndarray | None = None
    if _is_int(limit, 1, 1 << 20) and names:
        chunks, taken = [], 0
        for name in names:
            if taken >= int(limit):
                break
            images = _reference_file(kit.pool / name)
            if images is None:
                chunks = []
                break
            chunks.append(images[: int(limit) - taken])
            taken += chunks[-1].shape[0]
        expected = np.concatenate(chunks) if chunks else None
    if expected is None:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value.dtype == np.uint8 and 1 <= result.value.shape[0] <= int(limit)
    np.testing.assert_array_equal(result.value, expected)


MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK"]
FORMATS = ["PNG", "GIF", "BMP", "TIFF", "JPEG", "WEBP", "PPM"]


@st.composite
def image_files(draw: st.DrawFn) -> tuple[bytes, np.ndarray | None]:
    """An image file's bytes, and the 28x28 result when it is known exactly (a lossless 28x28
    greyscale picture); made by Pillow in any mode and format, random bytes, a real PNG with
    bytes flipped or cut, or a pixel bomb's header."""
    kind = draw(st.sampled_from(["pillow", "pillow", "pillow", "bytes", "flipped", "bomb"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), None
    if kind == "bomb":
        return _png_header(draw(st.integers(4097, 60_000)), draw(st.integers(4097, 60_000))), None
    if kind == "flipped":
        real = io.BytesIO()
        Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(real, format="PNG")
        data = bytearray(real.getvalue())
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))]), None
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    size = (28, 28) if draw(st.booleans()) else (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probe = Image.new(mode, (1, 1))
    raw = rng.integers(0, 256, size[0] * size[1] * len(probe.tobytes()), dtype=np.uint8)
    image = Image.frombytes(mode, size, raw.tobytes())
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, KeyError, ValueError, TypeError):  # this format cannot hold this mode
        buffer = io.BytesIO()
        image = image.convert("L")
        image.save(buffer, format="PNG")
        mode, fmt = "L", "PNG"
    known = None
    if mode == "L" and size == (28, 28) and fmt in ("PNG", "BMP", "TIFF", "PPM"):
        pixels = np.asarray(image)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        known = 255 - pixels if border.mean() > 127 else pixels
    return buffer.getvalue(), known


@bounded(80)
@given(file=image_files())
def test_read_image(kit: Kit, file: tuple[bytes, np.ndarray | None]) -> None:
    """read_image: uint8 (28, 28) for any picture Pillow reads (exact for a 28x28 greyscale one),
    a VaeError for anything else; never another exception."""
    content, known = file
    path = Path(tempfile.mkdtemp(prefix="image-", dir=kit.scratch)) / "input.img"
    try:
        path.write_bytes(content)
        result = attempt(lambda: read_image(path))
        if known is not None:
            assert not refused(result), result.error
            np.testing.assert_array_equal(result.value, known)
        if not refused(result):
            assert result.value.dtype == np.uint8 and result.value.shape == (28, 28)
    finally:
        shutil.rmtree(path.parent)


@st.composite
def idx_files(draw: st.DrawFn) -> tuple[bytes, tuple[tuple[int, ...], bytes] | None, bool]:
    """IDX bytes, raw or gzip: half the time a valid uint8 file of 1 to 4 small dimensions,
    otherwise one thing wrong (first bytes, type, no dimensions, dimensions up to 2**32 - 1, a
    body too short or too long, a cut header, a cut or changed gzip stream). Returns (content,
    (shape, body) when it is a valid file, certain): `certain` is False when a changed gzip
    byte may or may not matter."""
    fault = draw(
        st.sampled_from(["none"] * 6 + ["zero", "type", "ndim", "huge", "body", "cut", "gzip"])
    )
    zero = draw(st.sampled_from([1, 256, 0xFFFF])) if fault == "zero" else 0
    kind = draw(st.sampled_from([0, 9, 0x0B, 0x0D, 0xFF])) if fault == "type" else 8
    ndim = 0 if fault == "ndim" else draw(st.integers(1, 4))
    dims = [draw(st.integers(0, 4)) for _ in range(ndim)]
    if fault == "huge":
        dims[draw(st.integers(0, ndim - 1))] = draw(st.sampled_from([60_000, 2**31, 2**32 - 1]))
    header = struct.pack(">HBB", zero, kind, ndim) + struct.pack(f">{ndim}I", *dims)
    size = math.prod(dims) if ndim else 0
    length = size if size <= 256 else draw(st.integers(0, 64))
    if fault == "body":
        length = max(0, length + draw(st.sampled_from([-1, 1, 5])))
    body = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
    content = header + body
    if fault == "cut":
        content = content[: draw(st.integers(0, len(header) - 1))]
    valid = fault not in ("zero", "type", "ndim", "cut") and length == size  # (huge x 0 is fine)
    certain = True
    if fault == "gzip" or draw(st.booleans()):
        content = gzip.compress(content, mtime=0)
        if fault == "gzip" and draw(st.booleans()):
            content = content[: draw(st.integers(0, len(content) - 1))]
            valid = False
        elif fault == "gzip":
            at = draw(st.integers(0, len(content) - 1))
            content = content[:at] + bytes([content[at] ^ 0xFF]) + content[at + 1 :]
            certain = False
    return content, ((tuple(dims), body) if valid else None), certain


@bounded(100)
@given(
    file=idx_files(),
    magic=mostly(st.none(), st.sampled_from([2051, 2049, 2050, 0, -1, 2**40, "x", 2051.0])),
    limit=mostly(st.one_of(st.none(), st.integers(0, 5)), ints_or_junk((-1, 5))),
)
def test_read_idx(kit: Kit, file: tuple[Any, Any, bool], magic: Any, limit: Any) -> None:
    """read_idx: the header's shape (the first `limit` rows) with exactly the file's bytes, or a
    VaeError; never a partial or uninitialised array."""
    content, spec, certain = file
    path = Path(tempfile.mkdtemp(prefix="idx-", dir=kit.scratch)) / "data.idx"
    try:
        path.write_bytes(content)
        result = attempt(lambda: read_idx(path, magic, limit=limit))
        if refused(result) and not certain:
            return  # a changed gzip byte that mattered
        if spec is None or not (limit is None or _is_int(limit, 0)):
            assert refused(result) or not certain
            return
        dims, body = spec
        found = (8 << 8) | len(dims)
        if magic is not None and found != magic:
            assert refused(result)
            return
        assert not refused(result), result.error
        rows = dims[0] if limit is None else min(int(limit), dims[0])
        shape = (rows, *dims[1:])
        assert result.value.dtype == np.uint8 and result.value.shape == shape
        expected = np.frombuffer(body[: math.prod(shape)], dtype=np.uint8).reshape(shape)
        np.testing.assert_array_equal(result.value, expected)
    finally:
        shutil.rmtree(path.parent)


@bounded(60)
@given(
    array=mostly(
        arrays(st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple), dtypes=[np.uint8]),
        st.one_of(arrays(st.lists(st.integers(0, 4), max_size=4).map(tuple)), NON_ARRAYS),
    ),
    name=mostly(
        st.sampled_from(["a.idx", "a.idx.gz"]),
        st.sampled_from(["sub", "missing/a.idx", "fifo", ""]),
    ),
    compress=st.sampled_from([None, None, True, False]),
)
def test_write_idx(kit: Kit, array: Any, name: str, compress: bool | None) -> None:
    """write_idx: a file read_idx reads back equal (gzip when asked or named .gz), or a VaeError
    and nothing written."""
    folder = _writer_folder(kit)
    try:
        path = folder / name
        before = tree(folder)
        result = attempt(lambda: write_idx(path, array, compress=compress))
        values = np.asarray(array)
        valid = (
            values.dtype == np.uint8 and 1 <= values.ndim <= 255 and name in ("a.idx", "a.idx.gz")
        )
        if not valid:
            assert refused(result)
            assert tree(folder) == before
            return
        assert not refused(result), result.error
        zipped = path.read_bytes()[:2] == b"\x1f\x8b"
        assert zipped == (compress if compress is not None else name.endswith(".gz"))
        back = read_idx(path)
        assert back.shape == values.shape
        np.testing.assert_array_equal(back, values)
    finally:
        shutil.rmtree(folder)


@bounded(60)
@given(
    shape=mostly(
        st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
        st.one_of(
            st.lists(st.one_of(st.integers(-1, 4), st.sampled_from([2**40, 10**30])), max_size=3),
            st.sampled_from([("a",), (1.5,), 3, None, (True,)]),
        ).map(lambda v: tuple(v) if isinstance(v, list) else v),
    ),
    dtype=st.sampled_from([np.float32, np.float32, np.uint8, np.float64, ">f4", "<u2", None]),
    batches=mostly(
        st.lists(st.integers(1, 3), max_size=4).map(lambda rows: [(r, "same") for r in rows]),
        st.lists(
            st.tuples(st.integers(0, 3), st.sampled_from(["same", "same", "dtype", "shape"])),
            max_size=4,
        ),
    ),
    complete=st.booleans(),
)
def test_npy_writer(
    kit: Kit, shape: Any, dtype: Any, batches: list[tuple[int, str]], complete: bool
) -> None:
    """NpyWriter: the .npy holds exactly the batches written, in the declared shape and dtype,
    once all rows have arrived; anything else is a VaeError and no file. (`complete`: declare
    exactly the rows the batches hold.)"""
    if complete and isinstance(shape, tuple) and shape:
        shape = (sum(rows for rows, _ in batches), *shape[1:])
    folder = _writer_folder(kit)
    try:
        path = folder / "out.npy"
        kind = np.dtype(dtype)
        rng = np.random.default_rng(len(batches))
        arrays_: list[np.ndarray] = []
        for rows, how in batches:
            tail = tuple(shape[1:]) if how != "shape" else (*shape[1:], 1)
            if any(d < 0 or d > 4 for d in tail):
                tail = (1,)
            made = rng.random((rows, *tail)) * 100
            arrays_.append(made.astype(kind if how != "dtype" else np.int8))

        def write() -> None:
            with NpyWriter(path, shape, dtype) as writer:
                for batch in arrays_:
                    writer.write(batch)

        before = tree(folder)
        result = attempt(write)
        ok_shape = len(shape) >= 1 and all(d >= 0 for d in shape)
        fits = ok_shape and math.prod(shape) * kind.itemsize < 1 << 30
        valid = (
            fits
            and all(a.shape[1:] == tuple(shape[1:]) and a.dtype == kind for a in arrays_)
            and sum(a.shape[0] for a in arrays_) == shape[0]
        )
        if not valid:
            assert refused(result)
            assert tree(folder) == before
            return
        assert not refused(result), result.error
        back = np.load(path, allow_pickle=False)
        assert back.dtype == kind and back.shape == tuple(shape)
        expected = np.concatenate(arrays_) if arrays_ else np.empty(shape, kind)
        np.testing.assert_array_equal(back, expected.reshape(shape))
    finally:
        shutil.rmtree(folder)


OUTPUT_NAMES = _names("a.bin b.bin keep.png sub link.png fifo missing/x.bin missing/deeper/y.bin")
OUTPUT_NAMES += ["in.txt", "hard.txt", "sub/../a.bin", "", ".", ".."]


@bounded(60)
@given(
    targets=st.lists(st.sampled_from(OUTPUT_NAMES), max_size=4),
    reads=st.lists(
        st.sampled_from(["in.txt", "keep.png", "missing/x.bin", "gone.txt"]), max_size=2
    ),
    force=st.booleans(),
    create_dirs=st.booleans(),
)
def test_outputs(
    kit: Kit, targets: list[str], reads: list[str], force: bool, create_dirs: bool
) -> None:
    """Outputs: a set it accepts follows every rule (absent or regular files, never an input
    (by path or inode), distinct, replaced only with force) and is written as given; a set it
    refuses is a VaeError and the folder is as it was."""
    folder = _writer_folder(kit)
    try:
        (folder / "in.txt").write_bytes(b"an input\n")
        os.link(folder / "in.txt", folder / "hard.txt")
        paths = [folder / t for t in targets]

        def write() -> None:
            with Outputs(paths, reads=[folder / r for r in reads], force=force,
                         create_dirs=create_dirs) as out:  # fmt: skip
                for path in paths:
                    out.write_bytes(path, f"new {path.name}".encode())
                out.commit()

        before = tree(folder)
        inodes = {t: _inode(folder / t) for t in [*targets, *reads]}
        result = attempt(write)
        if refused(result):
            assert tree(folder) == before
            return
        real_reads = {os.path.realpath(folder / r) for r in reads}
        read_inodes = {inodes[r] for r in reads} - {None}
        seen: set[str] = set()
        for target, path in zip(targets, paths, strict=True):
            old = before.get(os.path.relpath(os.path.normpath(path), folder))
            assert path.name not in ("", ".", ".."), target
            assert old is None or isinstance(old, bytes), f"replaced {target}: {old!r}"
            assert old is None or force, f"replaced {target} without force"
            real = os.path.realpath(path)
            assert real not in real_reads, f"replaced the input {target}"
            assert inodes[target] is None or inodes[target] not in read_inodes, target
            assert real not in seen, f"{target} given twice"
            seen.add(real)
            assert path.read_bytes() == f"new {path.name}".encode()
        left = [k for k in tree(folder) if ".mnist-vae-" in k or ".old-" in k]
        assert not left
    finally:
        shutil.rmtree(folder)


@bounded(30)
@given(threads=st.one_of(st.none(), ints_or_junk((-1, 4))))
def test_session_options(threads: Any) -> None:
    """session_options: intra-op threads as asked (1..cpu_count) or all cores, or a VaeError."""
    result = attempt(lambda: session_options(threads))
    if threads is not None and not _is_int(threads, 1, cpu_count()):
        assert refused(result)
        return
    assert not refused(result), result.error
    wanted = cpu_count() if threads is None else int(threads)
    assert result.value.intra_op_num_threads == wanted


@pytest.fixture(scope="module")
def graphs(kit: Kit) -> Path:
    """A folder of things to load as graphs: the exported pair and manifest, a symlink to the
    decoder (not listed in the manifest), a lone decoder, junk, a folder, a FIFO."""
    folder = kit.scratch / "graphs"
    folder.mkdir()
    for source in (kit.tiny.decoder, kit.tiny.encoder, kit.tiny.manifest):
        shutil.copy(source, folder / source.name)
    (folder / "link.onnx").symlink_to("decoder.onnx")
    (folder / "alone").mkdir()
    shutil.copy(kit.tiny.decoder, folder / "alone" / "decoder.onnx")
    (folder / "junk.onnx").write_bytes(b"\x08\x07" + bytes(range(200)))
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "dir.onnx").mkdir()
    os.mkfifo(folder / "fifo.onnx")
    return folder


GRAPH_FILES = {  # file -> the role it holds, "" when it must not load
    "decoder.onnx": "decoder",
    "encoder.onnx": "encoder",
    "alone/decoder.onnx": "decoder",
    "link.onnx": "",
    "manifest.json": "",
    "junk.onnx": "",
    "empty.onnx": "",
    "dir.onnx": "",
    "fifo.onnx": "",
    "missing.onnx": "",
}


@bounded(50)
@given(
    name=mostly(
        st.sampled_from(["decoder.onnx", "encoder.onnx", "alone/decoder.onnx"]),
        st.sampled_from(sorted(GRAPH_FILES)),
    ),
    cls=st.sampled_from([Decoder, Encoder]),
    providers=mostly(
        st.sampled_from([None, [], ["CPUExecutionProvider"]]),
        st.one_of(
            st.lists(st.sampled_from(["CPUExecutionProvider", "NoSuch", "", 1, None]), max_size=2),
            st.just("CPUExecutionProvider"),
        ),
        4,
    ),
    threads=mostly(st.sampled_from([None, 1, cpu_count()]), ints_or_junk((-1, 4)), 4),
)
def test_graph_load(graphs: Path, name: str, cls: type, providers: Any, threads: Any) -> None:
    """Decoder.load / Encoder.load: the graph of that role, checked, or a VaeError."""
    result = attempt(lambda: cls.load(graphs / name, providers=providers, threads=threads))
    valid = (
        GRAPH_FILES[name] == cls.role
        and (threads is None or _is_int(threads, 1, cpu_count()))
        and (not providers or all(p == "CPUExecutionProvider" for p in providers))
    )
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value.latent_dim == LATENT and result.value.info.role == cls.role


@bounded(50)
@given(
    hidden=mostly(st.integers(1, 16_384), ints_or_junk((-1, 20), numpy=False), 3),
    latent=mostly(st.integers(1, 4096), ints_or_junk((-1, 20), numpy=False), 3),
)
def test_vae_config(hidden: Any, latent: Any) -> None:
    """VAEConfig: plain ints in range that survive to_dict/from_dict, or a VaeError."""
    result = attempt(lambda: VAEConfig(hidden_dim=hidden, latent_dim=latent))
    if not (_is_int(hidden, 1, 16_384) and _is_int(latent, 1, contract.MAX_LATENT_DIM)):
        assert refused(result)
        return
    assert not refused(result), result.error
    config = result.value
    assert type(config.hidden_dim) is int and type(config.latent_dim) is int
    assert VAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


DEVICE_RULE = re.compile(r"auto|cpu|mps|cuda(:\d{1,3})?")  # README: auto, cpu, cuda, cuda:N, mps


@bounded(60)
@given(
    epochs=mostly(st.integers(1, MAX_EPOCH), ints_or_junk((-1, 5), numpy=False), 5),
    batch_size=mostly(st.integers(1, 1 << 16), ints_or_junk((-1, 5), numpy=False), 5),
    lr=mostly(st.floats(1e-9, 10), reals_or_junk(numpy=False), 5),
    seed=mostly(st.integers(0, 2**63 - 2), ints_or_junk((-1, 5), numpy=False), 5),
    device=mostly(
        st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:123", "mps"]),
        st.one_of(words("cpu", "cuda:1234", "cuda:-1"), NON_ARRAYS),
        5,
    ),
)
def test_train_settings(epochs: Any, batch_size: Any, lr: Any, seed: Any, device: Any) -> None:
    """TrainSettings: plain values in range, or a VaeError."""
    result = attempt(lambda: TrainSettings(epochs, batch_size, lr, seed, device))
    valid = (
        _is_int(epochs, 1, MAX_EPOCH)
        and _is_int(batch_size, 1, 1 << 16)
        and _is_real(lr, 0, 10)
        and float(lr) > 0
        and _is_int(seed, 0, 2**63 - 2)
        and isinstance(device, str)
        and DEVICE_RULE.fullmatch(device) is not None
    )
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    settings_ = result.value
    assert [type(getattr(settings_, f)) for f in ("epochs", "batch_size", "seed")] == [int] * 3
    assert type(settings_.lr) is float and type(settings_.device) is str
