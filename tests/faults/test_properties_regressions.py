"""What the properties found, kept as focused regression tests."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import tree
from properties import (
    LATENT,
    TRAIN_OUTPUTS,
    Kit,
    attempt,
    check_cli,
    effects,
    make_case,
    refused,
    resume_args,
    run_cli,
    watchdog,
)

from vae_runtime import contract
from vae_runtime.contract import Manifest, parse_metadata
from vae_runtime.idx import read_idx, write_idx
from vae_runtime.images import (
    gif_bytes,
    grid_size,
    png_bytes,
    tile,
    to_uint8,
    upscale,
)
from vae_runtime.inputs import load_inputs, read_image
from vae_runtime.npy import NpyWriter
from vae_runtime.sampling import (
    interpolate,
    manifold_latents,
    sample_latents,
)
from vae_runtime.session import Decoder, reconstruct
from vae_train import cli as train_cli
from vae_train.checkpoint import load_checkpoint
from vae_train.model import VAEConfig
from vae_train.training import TrainSettings, train

# -- 4. what the properties found: focused regressions ------------------------------------------


@pytest.mark.parametrize(
    ("z0", "z1", "method"),
    [([1e300], [1e300], "slerp"), ([1e39], [0.0], "lerp"), ([1e300, 1.0], [1.0, 1e300], "slerp")],
)
def test_regression_interpolate_never_overflows(
    z0: list[float], z1: list[float], method: str
) -> None:
    """Finite float64 ends whose values (or norm) pass float32's range: interpolate casts the
    path to float32 and returns inf instead of refusing."""
    result = attempt(lambda: interpolate(z0, z1, 2, method))
    assert refused(result) or np.isfinite(result.value).all(), result.value


def test_regression_decoder_output_above_one(kit: Kit) -> None:
    """onnxruntime's Sigmoid (an approximation) returns 1.0000001 for some large logits; the
    Decoder passes it on although the contract says [0, 1], so `--npy` holds pixels above 1 and
    Encoder.encode refuses the decoder's own output ("float image pixels must be in [0, 1],
    got 0..1"). With the tiny model, z = [284.9455, 223.21759] is one such latent."""
    z = (np.random.default_rng(0).standard_normal((20_000, LATENT)) * 100).astype(np.float32)
    images = kit.decoder.decode(z)
    assert images.min() >= 0 and images.max() <= 1, images.max()
    kit.encoder.encode(images[:64])  # the decoder's output is a valid encoder input


@pytest.mark.parametrize(
    ("pixels", "scale"), [(np.uint8(7), 2), (np.zeros(3, np.uint8), 2), ("abc", 1)]
)
def test_regression_upscale_unchecked(pixels: Any, scale: int) -> None:
    """upscale(0-d or 1-D array) raises numpy's AxisError; with scale 1 anything at all
    (a str) comes back as the "upscaled" picture."""
    result = attempt(lambda: upscale(pixels, scale))
    assert refused(result) or (
        isinstance(result.value, np.ndarray) and result.value.dtype == np.uint8
    ), result.value


@pytest.mark.parametrize(("height", "width"), [(-5, 28), (28, 0), (1.5, 28), (True, 28)])
def test_regression_grid_size_unchecked_dims(height: Any, width: Any) -> None:
    """grid_size(1, 1, height=-5) returns (-1, 32): a negative size, not an error."""
    result = attempt(lambda: grid_size(1, 1, height, width))
    assert refused(result), result.value


@pytest.mark.parametrize(
    "call",
    [
        lambda: grid_size(1, 1, 1, 2**63 - 1, np.int64(0), 2),
        lambda: grid_size(np.int64(2**62), 1),
        lambda: tile(np.zeros((1, 2, 2), np.float32), np.int64(2**62), 1),
    ],
    ids=["width-int64-max", "rows-2**62", "tile-rows-2**62"],
)
def test_regression_grid_size_numpy_overflow(call: Callable[[], Any]) -> None:
    """check_int accepts numpy integers but grid_size drops the int it returns and multiplies
    the numpy values: grid_size(1, 1, 1, 2**63 - 1, np.int64(0), 2) returns (2, -2), a
    wrapped-around size that passes the pixel cap."""
    result = attempt(call)
    assert refused(result), result.value


@pytest.mark.parametrize("version", ["0", "-5"])
def test_regression_metadata_version_not_positive(kit: Kit, version: str) -> None:
    """A graph whose vae.format_version is 0 or negative is accepted (manifest.json refuses
    the same value)."""
    props = {**dict(kit.metadata["decoder"]), contract.META_FORMAT: version}
    result = attempt(lambda: parse_metadata(props, "graph.onnx"))
    assert refused(result), result.value


RAGGED = [[0.0, 0.5], [0.5]]
RAGGED_CALLS: dict[str, Callable[[Kit], Any]] = {
    "Decoder.decode": lambda kit: kit.decoder.decode(RAGGED),
    "Encoder.encode": lambda kit: kit.encoder.encode(RAGGED),
    "reconstruct": lambda kit: reconstruct(kit.encoder, kit.decoder, RAGGED),
    "to_uint8": lambda kit: to_uint8(RAGGED),
    "tile": lambda kit: tile(RAGGED, 1, 1),
    "png_bytes": lambda kit: png_bytes(RAGGED),
    "gif_bytes": lambda kit: gif_bytes([RAGGED]),
    "write_idx": lambda kit: write_idx(kit.scratch / "ragged.idx", RAGGED),
}


@pytest.mark.parametrize("call", sorted(RAGGED_CALLS))
def test_regression_ragged_lists(kit: Kit, call: str) -> None:
    """np.asarray of a ragged list raises numpy's bare ValueError ("inhomogeneous shape") in
    every array argument but interpolate's, which wraps it in InvalidArgumentError."""
    attempt(lambda: RAGGED_CALLS[call](kit))


def _npy_object(path: Path) -> None:
    with NpyWriter(path, (2,), object) as writer:
        writer.write(np.array([1, "x"], dtype=object))


def _npy_list(path: Path) -> None:
    with NpyWriter(path, (2,)) as writer:
        writer.write([1.0, 2.0])  # type: ignore[arg-type]


def _npy_past_int64(path: Path) -> None:
    with NpyWriter(path, (0, 10**30)):
        pass  # no rows to write: the file is "complete", and numpy cannot load it


NPY_CALLS: dict[str, Callable[[Path], Any]] = {
    "shape of str": lambda path: NpyWriter(path, ("a",)),
    "shape of float": lambda path: NpyWriter(path, (1.5,)),
    "shape an int": lambda path: NpyWriter(path, 3),  # type: ignore[arg-type]
    "unknown dtype": lambda path: NpyWriter(path, (1,), "abc"),
    "object dtype": _npy_object,
    "batch a list": _npy_list,
    "a shape numpy cannot make": _npy_past_int64,
}


@pytest.mark.parametrize("call", sorted(NPY_CALLS))
def test_regression_npy_writer_unchecked(kit: Kit, call: str) -> None:
    """NpyWriter(path, ("a",)) raises a bare ValueError, (1.5,) silently becomes (1,), 3 a
    TypeError, dtype "abc" a TypeError, dtype object writes raw pointers into the file,
    write([1.0, 2.0]) an AttributeError, and a shape numpy cannot make but holding a 0, such as
    (0, 10**30) or (0, 2**40, 2**40), is written as a header np.load refuses (OverflowError,
    "array is too big")."""
    folder = Path(tempfile.mkdtemp(prefix="npy-", dir=kit.scratch))
    result = attempt(lambda: NPY_CALLS[call](folder / "out.npy"))
    assert refused(result), f"accepted; the file holds {sorted(p.name for p in folder.iterdir())}"


@pytest.mark.parametrize(
    "make",
    [
        lambda: VAEConfig(hidden_dim=np.int64(16)),
        lambda: TrainSettings(epochs=np.int64(2)),
        lambda: TrainSettings(lr=np.float32(1e-3)),
        lambda: TrainSettings(lr=Fraction(1, 1000)),
        lambda: TrainSettings(lr=1),
    ],
    ids=["VAEConfig-int64", "epochs-int64", "lr-float32", "lr-Fraction", "lr-int"],
)
def test_regression_settings_keep_numpy_numbers(make: Callable[[], Any]) -> None:
    """check_int/check_float accept numpy numbers, Fractions (and an int lr) but __post_init__
    drops the plain int/float they return, so the dataclass keeps what was given (see the next
    test for what that breaks)."""
    made = make()
    wanted = {"lr": float, "device": str, "compute_dtype": str, "binarize": bool}
    types = {f: type(getattr(made, f)) for f in made.__dataclass_fields__}
    assert types == {f: wanted.get(f, int) for f in types}, types


def test_regression_train_with_numpy_lr_writes_unreadable_checkpoint(kit: Kit) -> None:
    """train(TrainSettings(lr=np.float32(1e-3)), ...) succeeds, but the model.pt it wrote holds
    a numpy scalar that load_checkpoint (weights_only) refuses as "pickled Python objects"."""
    out = Path(tempfile.mkdtemp(prefix="numpy-lr-", dir=kit.scratch))
    settings_ = TrainSettings(epochs=1, batch_size=64, lr=np.float32(1e-3), device="cpu")
    with watchdog(120):
        train(settings_, VAEConfig(16, 2), out_dir=out, data_dir=kit.tiny.data)
    load_checkpoint(out / "model.pt")


WRONG_TYPE_CALLS: dict[str, Callable[[Kit], Any]] = {
    "Decoder.load(None)": lambda kit: Decoder.load(None),  # type: ignore[arg-type]
    "read_image(None)": lambda kit: read_image(None),  # type: ignore[arg-type]
    "read_idx(None)": lambda kit: read_idx(None),  # type: ignore[arg-type]
    "Manifest.load(None)": lambda kit: Manifest.load(None),  # type: ignore[arg-type]
    "load_inputs(5, 1)": lambda kit: load_inputs(5, 1),  # type: ignore[arg-type]
    "iter_decode(None)": lambda kit: list(kit.decoder.iter_decode(None)),  # type: ignore[arg-type]
    "parse_metadata(None)": lambda kit: parse_metadata(None, "x"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize(
    "call",
    [
        lambda: sample_latents(1, 2, 0, temperature=10**400),
        lambda: manifold_latents(2, 2, temperature=-(10**400)),
        lambda: TrainSettings(lr=10**400),
    ],
    ids=["sample_latents", "manifold_latents", "TrainSettings"],
)
def test_regression_check_float_huge_int(call: Callable[[], Any]) -> None:
    """check_float(name, 10**400, ...) calls float(10**400), which raises a bare OverflowError
    ("int too large to convert to float") instead of InvalidArgumentError."""
    attempt(call)


@pytest.mark.parametrize("shape", [(0, 3), (0, 1, 28, 28), (2, 0)])
def test_regression_npy_writer_empty_batch(kit: Kit, shape: tuple[int, ...]) -> None:
    """Writing a batch with no elements (0 rows, or a zero-size dimension) of 2 or more
    dimensions: memoryview(...).cast("B") raises "cannot cast view with zeros in shape or
    strides" (a bare TypeError); a 1-D empty batch works."""
    folder = Path(tempfile.mkdtemp(prefix="npy-", dir=kit.scratch))
    declared = (0, *shape[1:]) if shape[0] == 0 else shape

    def write() -> None:
        with NpyWriter(folder / "out.npy", declared) as writer:
            writer.write(np.zeros((0, *shape[1:]), np.float32))
            if shape[0]:
                writer.write(np.zeros(shape, np.float32))

    attempt(write)
    back = np.load(folder / "out.npy")
    assert back.shape == declared


@pytest.mark.parametrize("call", sorted(WRONG_TYPE_CALLS))
def test_regression_wrong_type_arguments(kit: Kit, call: str) -> None:
    """None (or an int) where a path, a list of paths or a dict is expected raises a bare
    TypeError from pathlib or iteration instead of InvalidArgumentError."""
    attempt(lambda: WRONG_TYPE_CALLS[call](kit))


def test_regression_manifest_with_nan_cannot_be_written(kit: Kit) -> None:
    """Manifest.load accepts NaN in the fields it does not check (json.loads reads NaN), then
    to_bytes raises a bare ValueError (allow_nan=False)."""
    content = copy.deepcopy(kit.manifest)
    content["training"]["test_loss"] = math.nan
    path = kit.scratch / "nan-manifest.json"
    path.write_text(json.dumps(content))
    result = attempt(lambda: Manifest.load(path).to_bytes())
    assert refused(result) or b"NaN" not in result.value


ADAM_DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "exp_avg missing": lambda o: o["state"][0].pop("exp_avg"),
    "step a 2-element tensor": lambda o: o["state"][0].__setitem__("step", torch.zeros(2)),
    "lr a str": lambda o: o["param_groups"][0].__setitem__("lr", "x"),
    "betas of 1": lambda o: o["param_groups"][0].__setitem__("betas", (0.9,)),
    "eps None": lambda o: o["param_groups"][0].__setitem__("eps", None),
}


def _resume_is_refused(kit: Kit, payload: dict[str, Any]) -> None:
    """`vae-train --resume` of a model.pt holding `payload` fails in one line (exit 1 or 2),
    touching nothing but what a resumed run may write."""
    root, work = make_case(kit)
    try:
        torch.save(payload, work / "model.pt")
        allowed = effects(root, work, [f"run2/{n}" for n in TRAIN_OUTPUTS], ["model.pt"])
        before = tree(root)
        result = run_cli(kit, train_cli.app, "vae-train", resume_args(kit), work)
        check_cli(result, "vae-train", before, tree(root), allowed, codes=(1, 2))
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("damage", sorted(ADAM_DAMAGE))
def test_regression_resume_adam_state(kit: Kit, damage: str) -> None:
    """model.pt whose optimizer state lacks a moment, or whose param_groups hold a bad lr,
    betas or eps: optimizer.load_state_dict takes it, _Run._restore checks only the moments'
    shapes, and the first Adam step raises "internal error (KeyError: 'exp_avg')" (or a
    TypeError/ValueError/RuntimeError from torch)."""
    payload = copy.deepcopy(kit.payload)
    ADAM_DAMAGE[damage](payload["optimizer"])
    _resume_is_refused(kit, payload)


@pytest.mark.parametrize("key", ["lr", "batch_size", "seed"])
def test_regression_resume_with_tensor_setting(kit: Kit, key: str) -> None:
    """model.pt whose run.<key> is a 3-element tensor: `vae-train --resume` prints "internal
    error (RuntimeError: Boolean value of Tensor with more than one value is ambiguous)"."""
    payload = copy.deepcopy(kit.payload)
    payload["run"][key] = torch.zeros(3)
    _resume_is_refused(kit, payload)
