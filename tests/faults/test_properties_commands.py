"""Every command, every option, any value: no traceback, one line on failure.

vae-generate, vae-interpolate, vae-reconstruct, vae-train and vae-export run in-process through
CliRunner with a drawn subset of their options, each at a drawn value (extremes, non-numbers,
odd paths, normal values), in a case folder that already holds files."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from helpers import tree
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from properties import (
    EXPORT_FILES,
    HUGE_INTS,
    TRAIN_OUTPUTS,
    Effects,
    Kit,
    _names,
    bounded,
    check_cli,
    effects,
    make_case,
    mostly,
    run_cli,
    words,
)

from vae_export import MIN_OPSET
from vae_export import cli as export_cli
from vae_runtime.cli import generate_app, interpolate_app, reconstruct_app
from vae_runtime.session import cpu_count
from vae_train import cli as train_cli

# -- the case folder a command runs in ------------------------------------------------------------


# -- option values, as a user types them -----------------------------------------------------------

INT_TEXTS = _names("-1 0 1 2 3 -0 +2 0x10 1_0 1e3 1.5 abc nan inf -inf")
INT_TEXTS += ["", " 3", "3 ", "\u0661\u0662", "\uff12"]  # int() takes Arabic, full-width digits
INT_TEXTS += ["9" * 5000, str(-(10**30)), *map(str, HUGE_INTS)]  # 5000 digits: past int()'s limit
FLOAT_TEXTS = _names("nan -nan NaN inf -inf Infinity 1e309 -1e309 1e-320 0 -0.0 1 0.5 2 999.9")
FLOAT_TEXTS += _names("1000 1000.0001 1e30 abc 0x10 1,5 1_0.5")
FLOAT_TEXTS += ["", " 2", "9" * 5000, str(2**64 + 1)]


def int_texts(cheap: int | None = None, valid_up_to: float = math.inf) -> SearchStrategy[str]:
    """Texts for an integer option. With `cheap`, the values that parse to a valid but costly
    number (cheap < value <= valid_up_to) are not drawn, so no case is an enormous job."""

    def affordable(text: str) -> bool:
        if cheap is None:
            return True
        try:
            value = int(text)  # what click does with an int option's text
        except ValueError:
            return True
        return not cheap < value <= valid_up_to

    return st.one_of(
        st.sampled_from(INT_TEXTS),
        st.integers(-3, 12).map(str),
        st.integers(-(2**70), 2**70).map(str),
    ).filter(affordable)


def float_texts() -> SearchStrategy[str]:
    """Texts for a float option: not finite, huge, subnormal, negative, non-numbers."""
    return st.one_of(
        st.sampled_from(FLOAT_TEXTS),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.floats(0, 3).map(str),
        st.integers(-(2**70), 2**70).map(str),
    )


FLAG: SearchStrategy[str | None] = st.none()
OUT_PATHS = st.sampled_from(
    [
        *_names("x.png x.npy out/x.png new/deep/x.png sub sub/old.png samples.png keep.txt"),
        *_names("decoder.onnx manifest.json digit.png link.onnx fifo fifo/x.png keep.txt/x.png"),
        *["../outside.png", "", ".", ".."],
    ]
)
DIR_PATHS = st.sampled_from(["each", "sub", "new/deep", ".", "", "keep.txt", "fifo", "../each"])
GRAPHS = st.sampled_from(
    [
        *_names("decoder.onnx encoder.onnx link.onnx manifest.json keep.txt missing.onnx sub"),
        "",
        ".",
    ]
)
IMAGE_INPUTS = st.sampled_from(
    _names(
        "digit.png photo.png digits.gz keep.txt missing.png sub fifo empty.png decoder.onnx",
        "manifest.json data/t10k-labels-idx1-ubyte.gz",
    )
)
DATA_DIRS = st.sampled_from(["data", "data", "sub", "missing", "", ".", "keep.txt", "fifo"])
CHECKPOINTS = st.sampled_from(
    ["model.pt", "model.pt", "keep.txt", "missing.pt", "sub", "fifo", "digit.png", "", "empty.png"]
)
PROVIDERS = words("CPUExecutionProvider", "CUDAExecutionProvider", "cpu")


@dataclass(frozen=True)
class Opt:
    """An option's values: `normal` ones a user means, `wild` ones from every corner."""

    normal: SearchStrategy[str | None]
    wild: SearchStrategy[str | None]


def opt(normal: SearchStrategy[Any], wild: SearchStrategy[str | None]) -> Opt:
    """An Opt whose normal values are turned into text (ints and floats as typed)."""
    return Opt(normal.map(str), wild)


FLAG_OPT = Opt(FLAG, FLAG)


def ints(low: int, high: int) -> SearchStrategy[int]:
    """Plain integers in [low, high]: the normal values of an integer option."""
    return st.integers(low, high)


@dataclass(frozen=True)
class Command:
    """A drawn command line: its arguments, the options it gives, its positional arguments."""

    args: list[str]
    given: dict[str, str | None]
    positional: list[str]


Positional = Callable[[dict[str, str | None]], SearchStrategy[list[str]]]


@st.composite
def command_lines(
    draw: st.DrawFn,
    options: dict[str, Opt],
    base: dict[str, SearchStrategy[str | None]] | None = None,
    positional: tuple[Positional, SearchStrategy[list[str]]] | None = None,
) -> Command:
    """A subset of `options` after the always-given `base` ones (a drawn value overrides a base
    one), written `--name value` or `--name=value`. At most two values (options or the
    positional arguments) are wild, the rest normal: each case is a working command or one
    with a few bad values, so both the success path and each refusal are exercised."""
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=len(options)))
    wild = set(draw(st.lists(st.sampled_from([*chosen, "<args>"]), unique=True, max_size=2)))
    given: dict[str, str | None] = {name: draw(s) for name, s in (base or {}).items()}
    for name in chosen:
        given[name] = draw(options[name].wild if name in wild else options[name].normal)
    args: list[str] = []
    for name, value in given.items():
        if value is None:
            args.append(name)
        elif name.startswith("--") and draw(st.booleans()):
            args.append(f"{name}={value}")
        else:
            args += [name, value]
    inputs: list[str] = []
    if positional is not None:
        normal, wild_inputs = positional
        inputs = draw(wild_inputs if "<args>" in wild else normal(given))
    return Command([*args, *inputs], given, inputs)


def _beside(graph: str | None) -> list[str]:
    """A graph and the manifest.json beside it: what loading it reads."""
    if graph is None:
        return []
    return [graph, os.path.join(os.path.dirname(graph), "manifest.json")]


def _last(given: dict[str, str | None], *names: str, default: str | None = None) -> str | None:
    for name in names:
        if name in given:
            return given[name]
    return default


def _given(*values: str | None) -> list[str]:
    return [v for v in values if v is not None]


# -- 1. every command, every option, extreme values ------------------------------------------------

TEMPERATURES = opt(st.one_of(st.floats(0, 3), st.sampled_from([0, 1, 0.5])), float_texts())
PNG_OUT = opt(st.sampled_from(["x.png", "out/x.png", "new/deep/x.png", "samples.png"]), OUT_PATHS)
NPY_OUT = opt(st.sampled_from(["x.npy", "out/x.npy"]), OUT_PATHS)
SEEDS = opt(ints(0, 2**63 - 1), int_texts())
COMMON: dict[str, Opt] = {
    "--scale": opt(ints(1, 3), int_texts(3, 64)),
    "--padding": opt(ints(0, 4), int_texts(10, 1000)),
    "--provider": opt(st.just("CPUExecutionProvider"), PROVIDERS),
    "--threads": opt(ints(1, cpu_count()), int_texts()),
}
GENERATE_OPTIONS: dict[str, Opt] = {
    "--rows": opt(ints(1, 6), int_texts(40, 70_000)),
    "--cols": opt(ints(1, 6), int_texts(40, 70_000)),
    "--seed": SEEDS,
    "-t": TEMPERATURES,
    "-o": PNG_OUT,
    "--no-grid": FLAG_OPT,
    "-n": opt(ints(1, 40), int_texts(300, 10**9)),
    "--npy": NPY_OUT,
    "--images-dir": opt(st.sampled_from(["each", "new/deep", "sub"]), DIR_PATHS),
    "--manifold": FLAG_OPT,
    "--batch-size": opt(ints(1, 2000), int_texts()),
    **COMMON,
}
DECODER_ARG = {"--onnx": mostly(st.just("decoder.onnx"), GRAPHS, 3)}


@bounded(45)
@given(line=command_lines(GENERATE_OPTIONS, DECODER_ARG))
def test_generate_any_options(kit: Kit, line: Command) -> None:
    """vae-generate with any subset of its options at any value."""
    root, work = make_case(kit)
    try:
        given = line.given
        outputs = [] if "--no-grid" in given else _given(_last(given, "-o", default="samples.png"))
        outputs += _given(given.get("--npy"))
        allowed = effects(
            root, work, outputs, _beside(given["--onnx"]), _given(given.get("--images-dir"))
        )
        before = tree(root)
        result = run_cli(kit, generate_app, "vae-generate", line.args, work)
        check_cli(result, "vae-generate", before, tree(root), allowed)
    finally:
        shutil.rmtree(root)


INTERPOLATE_OPTIONS: dict[str, Opt] = {
    "--encoder": Opt(st.just("encoder.onnx"), GRAPHS),
    "--from-seed": SEEDS,
    "--to-seed": SEEDS,
    "-t": TEMPERATURES,
    "--steps": opt(ints(2, 30), int_texts(30, 10_000)),
    "--method": opt(st.sampled_from(["slerp", "lerp"]), words("slerp", "lerp")),
    "-o": PNG_OUT,
    "--gif": opt(st.sampled_from(["x.gif", "out/x.gif"]), OUT_PATHS),
    "--no-gif": FLAG_OPT,
    "--cols": opt(ints(1, 30), int_texts(64, 70_000)),
    "--gif-scale": opt(ints(1, 6), int_texts(6, 64)),
    "--frame-ms": opt(ints(1, 60_000), int_texts()),
    "--npy": NPY_OUT,
    **COMMON,
}
GOOD_IMAGES = st.sampled_from(["digit.png", "photo.png", "digits.gz"])


def _interpolation_inputs(given: dict[str, str | None]) -> SearchStrategy[list[str]]:
    """Two images (or one IDX file) with --encoder, none without."""
    if "--encoder" not in given:
        return st.just([])
    return st.one_of(st.lists(GOOD_IMAGES, min_size=2, max_size=2), st.just(["digits.gz"]))


@bounded(35)
@given(
    line=command_lines(
        INTERPOLATE_OPTIONS,
        DECODER_ARG,
        (_interpolation_inputs, st.lists(IMAGE_INPUTS, max_size=3)),
    )
)
def test_interpolate_any_options(kit: Kit, line: Command) -> None:
    """vae-interpolate with any subset of its options at any value, with or without inputs."""
    root, work = make_case(kit)
    try:
        given = line.given
        outputs = _given(_last(given, "-o", default="interpolation.png"), given.get("--npy"))
        if "--no-gif" not in given:
            outputs += _given(_last(given, "--gif", default="interpolation.gif"))
        reads = [*_beside(given["--onnx"]), *_beside(given.get("--encoder")), *line.positional]
        allowed = effects(root, work, outputs, reads)
        before = tree(root)
        result = run_cli(kit, interpolate_app, "vae-interpolate", line.args, work)
        check_cli(result, "vae-interpolate", before, tree(root), allowed)
    finally:
        shutil.rmtree(root)


RECONSTRUCT_OPTIONS: dict[str, Opt] = {
    "-n": opt(ints(1, 70), int_texts()),  # bounded by the inputs: at most 64 + 2 images exist
    "--cols": opt(ints(1, 20), int_texts(64, 70_000)),
    "-o": PNG_OUT,
    "--npy": NPY_OUT,
    **COMMON,
}
PAIR_ARGS = {
    "--encoder": mostly(st.just("encoder.onnx"), GRAPHS, 3),
    "--decoder": mostly(st.just("decoder.onnx"), GRAPHS, 3),
}
RECONSTRUCT_INPUTS = (
    lambda given: st.lists(GOOD_IMAGES, min_size=1, max_size=3),
    st.lists(IMAGE_INPUTS, max_size=3),
)


@bounded(35)
@given(line=command_lines(RECONSTRUCT_OPTIONS, PAIR_ARGS, RECONSTRUCT_INPUTS))
def test_reconstruct_any_options(kit: Kit, line: Command) -> None:
    """vae-reconstruct with any subset of its options at any value, any inputs."""
    root, work = make_case(kit)
    try:
        given = line.given
        outputs = _given(_last(given, "-o", default="reconstructions.png"), given.get("--npy"))
        reads = [*_beside(given["--encoder"]), *_beside(given["--decoder"]), *line.positional]
        allowed = effects(root, work, outputs, reads)
        before = tree(root)
        result = run_cli(kit, reconstruct_app, "vae-reconstruct", line.args, work)
        check_cli(result, "vae-reconstruct", before, tree(root), allowed)
    finally:
        shutil.rmtree(root)


TRAIN_OPTIONS: dict[str, Opt] = {
    "--epochs": opt(ints(1, 2), int_texts(2, 10_000)),
    "--batch-size": opt(st.one_of(st.just(64), ints(8, 256)), int_texts()),
    "--lr": opt(st.one_of(st.just(0.001), st.floats(1e-4, 1e-2)), float_texts()),
    "--seed": opt(ints(0, 3), int_texts()),
    "--hidden-dim": opt(st.one_of(st.just(16), ints(4, 32)), int_texts(32, 16_384)),
    "--latent-dim": opt(st.one_of(st.just(2), ints(1, 4)), int_texts(32, 4_096)),
    "--device": opt(
        st.sampled_from(["cpu", "auto"]),
        words("auto", "cpu", "cuda", "cuda:0", "cuda:99", "cuda:1000", "mps", "gpu"),
    ),
    "--data-dir": Opt(st.just("data"), DATA_DIRS),
    "--out": Opt(
        st.sampled_from(["run", "new/deep"]),
        st.sampled_from(["sub", ".", "keep.txt", "", "fifo", "data", "../outside", "model.pt"]),
    ),
    "--resume": Opt(st.just("model.pt"), CHECKPOINTS),
    "--force": FLAG_OPT,
    "--no-tune-threads": FLAG_OPT,
}
# The tiny run that is trained when no drawn value says otherwise (the model.pt in the case
# folder was trained with these for 1 epoch, so a --resume of it can succeed).
TRAIN_BASE: dict[str, SearchStrategy[str | None]] = {
    "--out": st.just("run"),
    "--epochs": st.just("2"),
    "--hidden-dim": st.just("16"),
    "--latent-dim": st.just("2"),
    "--batch-size": st.just("64"),
    "--seed": st.just("1"),
    "--device": st.just("cpu"),
    "--data-dir": st.just("data"),
    "--quiet": FLAG,
}


def _train_effects(root: Path, work: Path, given: dict[str, str | None]) -> Effects:
    out = given.get("--out") or "."
    data = given.get("--data-dir") or "."
    images = [f"{data}/{n}-images-idx3-ubyte{z}" for n in ("train", "t10k") for z in ("", ".gz")]
    resume = given.get("--resume")
    model = os.path.join(work, out, "model.pt")
    resumed_in_place = (
        resume is not None
        and os.path.isfile(model)
        and os.path.exists(os.path.join(work, resume))
        and os.path.samefile(model, os.path.join(work, resume))
    )
    reads = [*images, *([resume] if resume is not None and not resumed_in_place else [])]
    return effects(root, work, [os.path.join(out, name) for name in TRAIN_OUTPUTS], reads)


@bounded(30)
@given(line=command_lines(TRAIN_OPTIONS, TRAIN_BASE))
def test_train_any_options(kit: Kit, line: Command) -> None:
    """vae-train on the tiny data with a tiny model, any subset of its options at any value.
    A run that fails after committing an epoch (a loss that turns NaN) keeps those files."""
    root, work = make_case(kit)
    try:
        allowed = _train_effects(root, work, line.given)
        before = tree(root)
        result = run_cli(kit, train_cli.app, "vae-train", line.args, work, seconds=120)
        check_cli(result, "vae-train", before, tree(root), allowed, keeps_on_failure=True)
    finally:
        shutil.rmtree(root)


EXPORT_OPTIONS: dict[str, Opt] = {
    "-o": Opt(
        st.sampled_from(["exp", "new/deep"]),
        st.sampled_from(["sub", ".", "keep.txt", "", "fifo", "model.pt", "../outside"]),
    ),
    "--opset": opt(ints(MIN_OPSET, onnx.defs.onnx_opset_version()), int_texts()),
    "--force": FLAG_OPT,
    "--quiet": FLAG_OPT,
    "--data-dir": Opt(st.just("data"), DATA_DIRS),
}
EXPORT_INPUTS = (lambda given: st.just(["model.pt"]), CHECKPOINTS.map(lambda c: [c]))


@bounded(5)
@given(line=command_lines(EXPORT_OPTIONS, positional=EXPORT_INPUTS))
def test_export_any_options(kit: Kit, line: Command) -> None:
    """vae-export of the tiny model.pt (or of something else), any subset of its options.
    (Few cases: each export that gets through its checks takes seconds.)"""
    root, work = make_case(kit)
    try:
        checkpoint = line.positional[0]
        out = line.given.get("-o")
        out = os.path.dirname(checkpoint) if out is None else out
        data = line.given.get("--data-dir") or str(work / "data")
        reads = [checkpoint, f"{data}/t10k-images-idx3-ubyte.gz"]
        allowed = effects(root, work, [os.path.join(out, f) for f in EXPORT_FILES], reads)
        before = tree(root)
        result = run_cli(kit, export_cli.app, "vae-export", line.args, work, seconds=120)
        check_cli(result, "vae-export", before, tree(root), allowed)
    finally:
        shutil.rmtree(root)
