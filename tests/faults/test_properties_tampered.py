"""Tampered files, generated: manifest.json, graph metadata and checkpoint fields, read by the
commands and by the library; refused in one line or a `VaeError`, never a traceback."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
import typer
from helpers import tree
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from properties import (
    EXPORT_FILES,
    HUGE_INTS,
    TRAIN_OUTPUTS,
    Kit,
    _adam_internal,
    _names,
    attempt,
    bounded,
    check_cli,
    effects,
    make_case,
    refused,
    resume_args,
    run_cli,
)

from vae_export import cli as export_cli
from vae_runtime import contract
from vae_runtime.cli import generate_app, reconstruct_app
from vae_runtime.contract import Manifest, parse_metadata
from vae_train import cli as train_cli
from vae_train.checkpoint import MAX_EPOCH, Checkpoint, load_checkpoint
from vae_train.model import VAEConfig

# -- 2. tampered files ---------------------------------------------------------------------------

_DEEP = "\x00deep\x00"  # stands for a value nested 100,000 levels deep
_HUGE = "\x00huge\x00"  # stands for a 5,000-digit number
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, -1, 4096, 4097, *HUGE_INTS]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            *_names("mnist-vae/manifest fp32 fp16 encoder decoder decoder.onnx encoder.onnx"),
            *["../decoder.onnx", "/", ".", "", "a" * 64, "0" * 64, "A" * 64, _DEEP, _HUGE],
        ]
    ),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON-like (or checkpoint) tree; tensors and scalars are leaves."""
    paths = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += _json_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += _json_paths(child, (*prefix, index))
    return paths


def _get(tree_: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        tree_ = tree_[part]
    return tree_


def _mutate(document: Any, ops: list[tuple[str, tuple[Any, ...], Any]]) -> Any:
    """Apply (kind, path, value) operations in order: "delete" the entry at path, "replace" it
    with value, "copy" the value found at another path (value) there. An operation whose path
    no longer exists is skipped."""
    for kind, path, value in ops:
        try:
            new = copy.deepcopy(_get(document, value)) if kind == "copy" else value
            if not path:
                document = {} if kind == "delete" else new
                continue
            parent = _get(document, path[:-1])
            if kind == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = new
        except (KeyError, IndexError, TypeError):
            continue
    return document


@st.composite
def mutations(
    draw: st.DrawFn, document: Any, values: SearchStrategy[Any]
) -> list[tuple[str, tuple[Any, ...], Any]]:
    """One to three operations on `document` for `_mutate`."""
    paths = _json_paths(document)
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["delete", "replace", "replace", "copy"]))
        if kind == "replace":
            ops.append((kind, path, draw(values)))
        elif kind == "copy":
            ops.append((kind, path, draw(st.sampled_from(paths))))
        else:
            ops.append((kind, path, None))
    return ops


def _json_text(document: Any) -> bytes:
    """JSON with NaN/Infinity allowed, and the _DEEP/_HUGE markers expanded."""
    text = json.dumps(document)
    text = text.replace(json.dumps(_DEEP), "[" * 100_000 + "]" * 100_000)
    return text.replace(json.dumps(_HUGE), "1" + "0" * 5000).encode("utf-8", "surrogatepass")


@st.composite
def tampered_manifests(draw: st.DrawFn, real: dict[str, Any]) -> bytes:
    """manifest.json's bytes, the real one mutated, or not JSON at all."""
    real_bytes = json.dumps(real).encode()
    kind = draw(st.sampled_from(["mutated"] * 6 + ["raw", "cut"]))
    if kind == "mutated":
        return _json_text(_mutate(copy.deepcopy(real), draw(mutations(real, JSON_VALUES))))
    if kind == "cut":
        return real_bytes[: draw(st.integers(0, len(real_bytes) - 1))]
    return draw(
        st.one_of(
            st.sampled_from(
                [
                    *_names(b"null [] {} { NaN"),
                    *[b"", b"\xff\xfe\x00", b"[" * 100_000, b"\xef\xbb\xbf" + real_bytes],
                    real_bytes.replace(b'"', b"'"),
                ]
            ),
            st.binary(max_size=64),
        )
    )


def _graph_command(role: str) -> tuple[typer.Typer, str, list[str], list[str]]:
    """A command that loads the graph of `role` (and the manifest beside it): app, prog,
    arguments, outputs."""
    if role == "decoder":
        return generate_app, "vae-generate", ["--onnx", "decoder.onnx", "-o", "x.png"], ["x.png"]
    args = ["--encoder", "encoder.onnx", "--decoder", "decoder.onnx", "-o", "r.png", "digit.png"]
    return reconstruct_app, "vae-reconstruct", args, ["r.png"]


@bounded(40)
@given(data=st.data())
def test_tampered_manifest(kit: Kit, data: st.DataObject) -> None:
    """A manifest.json mutated field by field (or not JSON) beside good graphs: a graph still
    loads only if the manifest still vouches for it; otherwise one line, exit 1."""
    content = data.draw(tampered_manifests(kit.manifest), label="manifest.json")
    role = data.draw(st.sampled_from(["decoder", "encoder"]), label="role")
    root, work = make_case(kit)
    try:
        (work / "manifest.json").write_bytes(content)
        app, prog, args, outputs = _graph_command(role)
        allowed = effects(root, work, outputs, [])
        before = tree(root)
        result = run_cli(kit, app, prog, args, work)
        check_cli(result, prog, before, tree(root), allowed, codes=(0, 1))
    finally:
        shutil.rmtree(root)


METADATA_KEYS = [
    getattr(contract, f"META_{k}") for k in _names("FORMAT ROLE LATENT_DIM IMAGE_SHAPE")
]
METADATA_KEYS += [contract.META_PIXEL_RANGE, contract.META_PRODUCER, contract.META_SOURCE]
METADATA_KEYS += [contract.META_TRAINING, "vae.other", ""]
SAFE_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
METADATA_VALUES = st.one_of(
    SAFE_TEXT,
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            *_names("encoder decoder 0 1 2 3 -1 4096 4097 2.0 1e3 1_0 null {} [] NaN [0.0,1.0]"),
            *["", str(10**30), "9" * 5000, " 2 ", "[1, 28, 28]", "[28, 28]", "[1, 28, 28.5]"],
            *["[1.0, 28, 28]", "[0, 255]", "[" * 5000, '"abc"', '{"checkpoint": 1}'],
            "[" * 100_000 + "]" * 100_000,
        ]
    ),
    JSON_VALUES.map(lambda v: _json_text(v).decode("utf-8", "replace")),
)


@st.composite
def tampered_props(draw: st.DrawFn, real: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A graph's metadata_props with keys removed, values replaced, or keys given twice."""
    props = list(real)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(METADATA_KEYS))
        kind = draw(st.sampled_from(["delete", "set", "set", "twice"]))
        if kind == "delete":
            props = [(k, v) for k, v in props if k != key]
        elif kind == "set":
            value = draw(METADATA_VALUES)
            props = [(k, v) for k, v in props if k != key] + [(key, value)]
        else:
            props.append((key, draw(METADATA_VALUES)))
    return props


def _with_metadata(graph: bytes, props: list[tuple[str, str]]) -> bytes:
    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    for key, value in props:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _vouch(manifest: Path, name: str, blob: bytes) -> None:
    """Rewrite the manifest's entry of `name` to match `blob`."""
    content = json.loads(manifest.read_bytes())
    entry = content["files"][name]
    entry["sha256"], entry["bytes"] = hashlib.sha256(blob).hexdigest(), len(blob)
    manifest.write_text(json.dumps(content))


@bounded(30)
@given(data=st.data())
def test_tampered_graph_metadata(kit: Kit, data: st.DataObject) -> None:
    """A graph whose metadata_props were changed (the manifest updated to match, or not): it
    loads only if the metadata still describes it; otherwise one line, exit 1."""
    role = data.draw(st.sampled_from(["decoder", "encoder"]), label="role")
    props = data.draw(tampered_props(kit.metadata[role]), label="metadata_props")
    vouch = data.draw(st.booleans(), label="manifest updated")
    root, work = make_case(kit)
    try:
        name = f"{role}.onnx"
        original = (work / name).read_bytes()
        blob = _with_metadata(original, props)
        (work / name).write_bytes(blob)
        if vouch:
            _vouch(work / "manifest.json", name, blob)
        app, prog, args, outputs = _graph_command(role)
        allowed = effects(root, work, outputs, [])
        before = tree(root)
        result = run_cli(kit, app, prog, args, work)
        code = check_cli(result, prog, before, tree(root), allowed, codes=(0, 1))
        if code == 0:  # accepted: then the metadata (as onnxruntime reads it) says what it is
            seen = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            info = parse_metadata(seen.get_modelmeta().custom_metadata_map, name)
            assert vouch or blob == original, "a graph the manifest does not vouch for loaded"
            assert info.role == role and info.latent_dim == kit.decoder.latent_dim
    finally:
        shutil.rmtree(root)


CHECKPOINT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]
CHECKPOINT_DTYPES += [torch.int32, torch.uint8, torch.bool, torch.complex64]


@st.composite
def tensors(draw: st.DrawFn, like: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor of a drawn dtype, of `like`'s shape or a drawn one, filled with zeros, ones,
    noise, NaN, inf or huge values."""
    dtype = draw(st.sampled_from(CHECKPOINT_DTYPES))
    if like is not None and draw(st.booleans()):
        shape = tuple(like.shape)
    else:
        shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    fill = draw(st.sampled_from(["zeros", "ones", "noise", "nan", "inf", "huge"]))
    values = {
        "zeros": lambda: torch.zeros(shape, dtype=torch.float64),
        "ones": lambda: torch.ones(shape, dtype=torch.float64),
        "noise": lambda: torch.randn(shape, dtype=torch.float64, generator=torch.manual_seed(0)),
        "nan": lambda: torch.full(shape, math.nan, dtype=torch.float64),
        "inf": lambda: torch.full(shape, math.inf, dtype=torch.float64),
        "huge": lambda: torch.full(shape, 1e30, dtype=torch.float64),
    }[fill]()
    if dtype.is_floating_point or dtype.is_complex:
        return values.to(dtype)
    return torch.nan_to_num(values, nan=0.0, posinf=7.0).clamp(0, 100).to(dtype)


CHECKPOINT_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        tensors(),
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.one_of(st.text(max_size=6), st.integers(-2, 12)), children, max_size=3)
    ),
    max_leaves=6,
)


@dataclass(frozen=True)
class Tampered:
    """A tampered payload, shown in a failing example by what was done to it, not in full."""

    payload: Any
    ops: list[tuple[str, tuple[Any, ...], Any]]

    def __repr__(self) -> str:
        def short(value: Any) -> str:
            if isinstance(value, torch.Tensor):
                return f"tensor({value.dtype}, {list(value.shape)}, first {value.flatten()[:3]})"
            return repr(value)[:200]

        return "; ".join(
            f"{kind} {'.'.join(map(str, path))} {short(v)}" for kind, path, v in self.ops
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@st.composite
def tampered_checkpoints(
    draw: st.DrawFn, real: dict[str, Any], *, inside_adam: bool = True
) -> Tampered:
    """model.pt's payload with one to three fields deleted or replaced (primitives, lists,
    dicts, tensors of any dtype or shape, NaN), or a tensor swapped for one like it. Without
    `inside_adam`, nothing inside Adam's per-parameter state or param_groups is touched (most
    of the paths)."""
    paths = [p for p in _json_paths(real) if inside_adam or not _adam_internal(p)]
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        kind = draw(st.sampled_from(["delete", "replace", "replace", "like"]))
        original = _get(real, path)
        if kind == "like" and isinstance(original, torch.Tensor):
            ops.append(("replace", path, draw(tensors(like=original))))
        elif kind == "delete":
            ops.append(("delete", path, None))
        else:
            ops.append(("replace", path, draw(CHECKPOINT_VALUES)))
    return Tampered(_mutate(copy.deepcopy(real), ops), ops)


def _check_loaded(checkpoint: Checkpoint) -> None:
    """A checkpoint load_checkpoint accepted holds what its type promises."""
    assert isinstance(checkpoint.config, VAEConfig)
    assert all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.is_floating_point()
        for k, v in checkpoint.state_dict.items()
    )
    assert type(checkpoint.epoch) is int and 0 <= checkpoint.epoch <= MAX_EPOCH
    assert all(math.isfinite(v) for record in checkpoint.metrics for v in record.values()), (
        checkpoint.metrics
    )
    assert checkpoint.optimizer is None or isinstance(checkpoint.optimizer, dict)
    assert isinstance(checkpoint.rng, dict) and isinstance(checkpoint.run, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in checkpoint.versions.items())


@bounded(24)
@given(data=st.data())
def test_tampered_checkpoint_resume(kit: Kit, data: st.DataObject) -> None:
    """model.pt with fields deleted or replaced: load_checkpoint returns a sound Checkpoint or a
    typed error, and `vae-train --resume` answers in one line (exit 1 for a bad file, 2 for
    settings that do not match), never replacing anything on failure."""
    tampered = data.draw(tampered_checkpoints(kit.payload), label="model.pt")
    root, work = make_case(kit)
    try:
        torch.save(tampered.payload, work / "model.pt")
        loaded = attempt(lambda: load_checkpoint(work / "model.pt"))
        if not refused(loaded):
            _check_loaded(loaded.value)
            attempt(lambda: loaded.value.build_model())
        outputs = [f"run2/{name}" for name in TRAIN_OUTPUTS]
        allowed = effects(root, work, outputs, ["model.pt", "data"])
        before = tree(root)
        result = run_cli(kit, train_cli.app, "vae-train", resume_args(kit), work, seconds=120)
        check_cli(result, "vae-train", before, tree(root), allowed, keeps_on_failure=True)
    finally:
        shutil.rmtree(root)


@bounded(4)
@given(data=st.data())
def test_tampered_checkpoint_export(kit: Kit, data: st.DataObject) -> None:
    """`vae-export` of a model.pt with fields deleted or replaced: one line, exit 1 (or 0 when
    the change is harmless), and the output folder as it was on failure."""
    tampered = data.draw(tampered_checkpoints(kit.payload), label="model.pt")
    root, work = make_case(kit)
    try:
        torch.save(tampered.payload, work / "model.pt")
        outputs = [f"exp/{name}" for name in EXPORT_FILES]
        allowed = effects(root, work, outputs, ["model.pt"])
        before = tree(root)
        args = ["model.pt", "-o", "exp", "--quiet"]
        result = run_cli(kit, export_cli.app, "vae-export", args, work, seconds=120)
        check_cli(result, "vae-export", before, tree(root), allowed, codes=(0, 1))
    finally:
        shutil.rmtree(root)


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nonfinite(v) for v in value)
    return False


@bounded(80)
@given(data=st.data())
def test_manifest_load(kit: Kit, data: st.DataObject) -> None:
    """Manifest.load of a tampered manifest.json: a Manifest whose every field is what the type
    promises, written back and read again unchanged; or a VaeError."""
    content = data.draw(tampered_manifests(kit.manifest), label="manifest.json")
    folder = Path(tempfile.mkdtemp(prefix="manifest-", dir=kit.scratch))
    try:
        (folder / "manifest.json").write_bytes(content)
        result = attempt(lambda: Manifest.load(folder / "manifest.json"))
        if refused(result):
            return
        manifest = result.value
        assert type(manifest.latent_dim) is int and 1 <= manifest.latent_dim <= 4096
        assert manifest.files and isinstance(manifest.checkpoint, dict)
        for name, entry in manifest.files.items():
            assert name and "/" not in name and name not in (".", "..")
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
            assert type(entry.size) is int and entry.size >= 0
            assert entry.role in ("", "encoder", "decoder") and entry.precision == "fp32"
        assert not _has_nonfinite(manifest.details) and not _has_nonfinite(manifest.checkpoint)
        (folder / "again.json").write_bytes(manifest.to_bytes())
        again = Manifest.load(folder / "again.json")
        assert (again.files, again.latent_dim) == (manifest.files, manifest.latent_dim)
        assert (again.checkpoint, again.details) == (manifest.checkpoint, manifest.details)
    finally:
        shutil.rmtree(folder)


@bounded(80)
@given(data=st.data())
def test_parse_metadata(kit: Kit, data: st.DataObject) -> None:
    """parse_metadata: a GraphInfo that says exactly what the metadata says (a known role, a
    latent size in 1..4096, this format version), or a VaeError."""
    props: dict[str, Any] = data.draw(
        st.one_of(
            tampered_props(kit.metadata["decoder"]).map(dict),
            st.dictionaries(
                st.sampled_from(METADATA_KEYS), st.one_of(METADATA_VALUES, JSON_LEAVES)
            ),
        ),
        label="props",
    )
    result = attempt(lambda: parse_metadata(props, "graph.onnx"))
    if refused(result):
        return
    info = result.value
    assert info.role in contract.ROLES and info.role == props[contract.META_ROLE]
    assert type(info.latent_dim) is int and 1 <= info.latent_dim <= contract.MAX_LATENT_DIM
    assert info.latent_dim == int(props[contract.META_LATENT_DIM])
    assert info.format_version == contract.FORMAT_VERSION
    assert isinstance(info.source, dict) and isinstance(info.training, dict)
