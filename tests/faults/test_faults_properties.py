"""Property-based tests of issue 9, sections 4 and 5: no traceback for any value of any option or
any field of any file the toolkit reads, and a Python API that either answers correctly or raises
the toolkit's typed errors (`VaeError`), never a bare numpy/onnxruntime/torch exception and never
garbage.

Three parts:
  1. every command (vae-generate, vae-interpolate, vae-reconstruct, vae-train, vae-export) run
     in-process through CliRunner with a drawn subset of its options, each at a drawn value
     (extremes, non-numbers, odd paths, normal values), in a case folder that already holds files;
  2. tampered files, generated: manifest.json, graph metadata, checkpoint fields;
  3. the Python API called with arguments drawn from wide strategies; a result is checked against
     an independent reference (decoding is compared with onnxruntime run row by row, so no
     uninitialised memory can pass), anything refused must be a `VaeError`.

Bounded for CI: no example database (nothing written into the checkout), derandomized (the same
examples on every run, so the time is stable), no per-example deadline but a watchdog (SIGALRM)
that fails any call running past its limit, and values that would be valid but enormous (a
10,000-epoch run, a 3 GB .npy) are not drawn: each option's strategy leaves out the valid range
above a cheap bound. `VAE_PROPERTY_SCALE=4` multiplies every example count and
`VAE_PROPERTY_EXPLORE=1` draws fresh random examples, for a longer hunt by hand.

The bugs the properties found are kept as focused regression tests at the end.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import io
import json
import math
import numbers
import os
import re
import shutil
import signal
import stat
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from statistics import NormalDist
from types import FrameType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import typer
from helpers import outcome, tree
from hypothesis import HealthCheck, configuration, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as npst
from hypothesis.strategies import SearchStrategy
from PIL import Image
from processes import Tiny
from typer.testing import CliRunner, Result

from vae_export import MIN_OPSET
from vae_export import cli as export_cli
from vae_runtime import contract
from vae_runtime.cli import generate_app, interpolate_app, reconstruct_app
from vae_runtime.contract import Manifest, parse_metadata
from vae_runtime.errors import VaeError
from vae_runtime.fileio import Outputs
from vae_runtime.idx import IMAGES_MAGIC, read_idx, write_idx
from vae_runtime.images import (
    MAX_GRID_PIXELS,
    gif_bytes,
    grid_size,
    png_bytes,
    save_gif,
    save_png,
    tile,
    to_uint8,
    upscale,
)
from vae_runtime.inputs import load_inputs, read_image
from vae_runtime.npy import NpyWriter
from vae_runtime.sampling import (
    interpolate,
    iter_latents,
    manifold_latents,
    sample_latents,
)
from vae_runtime.session import Decoder, Encoder, cpu_count, reconstruct, session_options
from vae_train import cli as train_cli
from vae_train.checkpoint import MAX_EPOCH, Checkpoint, load_checkpoint
from vae_train.model import VAEConfig
from vae_train.training import OUTPUT_FILES, TrainSettings, train

# -- settings: bounded, reproducible, nothing written into the checkout ---------------------------

_SCALE = float(os.environ.get("VAE_PROPERTY_SCALE", "") or 1)
_EXPLORE = os.environ.get("VAE_PROPERTY_EXPLORE", "") not in ("", "0")


def bounded(examples: int) -> settings:
    """The settings of every property here: `examples` cases (times VAE_PROPERTY_SCALE), no
    example database, no deadline (the watchdog bounds each call instead), derandomized unless
    VAE_PROPERTY_EXPLORE is set."""
    return settings(
        database=None,
        deadline=None,
        max_examples=max(1, round(examples * _SCALE)),
        derandomize=not _EXPLORE,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hypothesis' own caches (its Unicode tables, the constants it collects) go to a temporary
    folder while this module runs, never into the checkout; there is no example database at
    all (database=None)."""
    previous = getattr(configuration, "__hypothesis_home_directory", None)
    configuration.set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis-home"))
    try:
        yield
    finally:
        configuration.set_hypothesis_home_dir(previous)


class Hang(BaseException):
    """A call ran past its watchdog limit. A BaseException, so that no `except Exception` of the
    code under test turns it into an ordinary error line."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Fail the block with `Hang` if it runs longer than `seconds` (SIGALRM)."""

    def fire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run the block with `folder` as the current directory."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


# -- what every property shares: the tiny model, sample inputs, reference sessions ----------------


@dataclass(frozen=True, repr=False)
class Kit:
    """Made once per module: the tiny model's files, prepared input files, the loaded graphs, an
    independent onnxruntime session per graph (the reference), and a scratch folder."""

    tiny: Tiny
    scratch: Path
    pool: Path  # prepared input files for load_inputs / read_image
    decoder: Decoder
    encoder: Encoder
    ref_decoder: ort.InferenceSession
    ref_encoder: ort.InferenceSession
    manifest: dict[str, Any]
    metadata: dict[str, list[tuple[str, str]]]  # role -> metadata_props of its graph
    payload: dict[str, Any]  # model.pt as torch.load(weights_only=True) reads it
    env: dict[str, str | None] = field(default_factory=dict)

    def __repr__(self) -> str:  # Hypothesis prints it with every failing example
        return f"Kit({self.scratch})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _digit_png(path: Path, size: tuple[int, int] = (28, 28), mode: str = "L") -> None:
    """A white stroke on black, `size` (width, height), saved in `mode`."""
    width, height = size
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 2 - 2 : width // 2 + 2] = 255
    image = Image.fromarray(pixels, mode="L")
    if mode == "RGBA":  # a light background with transparency: inverted, laid over white
        rgba = Image.new("RGBA", size, (240, 240, 240, 0))
        rgba.paste(Image.fromarray(255 - pixels).convert("RGBA"), mask=image)
        image = rgba
    elif mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16) * 257)
    image.save(path)


def _pool(folder: Path, tiny: Tiny) -> Path:
    """Input files of every kind load_inputs and read_image meet."""
    folder.mkdir()
    _digit_png(folder / "digit.png")
    _digit_png(folder / "photo.png", (40, 30), "RGBA")
    _digit_png(folder / "grey16.png", (30, 30), "I;16")
    shutil.copy(tiny.data / "t10k-images-idx3-ubyte.gz", folder / "digits.gz")
    write_idx(folder / "small.idx", np.arange(2 * 28 * 28, dtype=np.uint64).astype(np.uint8))
    write_idx(
        folder / "two.idx", (np.arange(2 * 28 * 28) % 251).astype(np.uint8).reshape(2, 28, 28)
    )
    write_idx(folder / "wrong.idx.gz", np.zeros((3, 5, 5), np.uint8))
    write_idx(folder / "labels.idx.gz", np.arange(10, dtype=np.uint8))
    (folder / "empty.png").write_bytes(b"")
    (folder / "note.txt").write_text("not an image\n")
    data = (folder / "digit.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(_png_header(50_000, 50_000))
    (folder / "folder").mkdir()
    os.mkfifo(folder / "fifo")
    return folder


def _png_header(width: int, height: int) -> bytes:
    """A PNG holding only its signature, an IHDR of the given size and IEND: a pixel bomb's
    header, with no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _metadata(path: Path) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in onnx.load(str(path)).metadata_props]


@pytest.fixture(scope="module")
def kit(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    """The module's shared objects; downloads are made impossible while it lives, and torch
    runs on one thread."""
    scratch = tmp_path_factory.mktemp("properties")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    cpu = ["CPUExecutionProvider"]
    made = Kit(
        tiny=tiny,
        scratch=scratch,
        pool=_pool(scratch / "pool", tiny),
        decoder=Decoder.load(tiny.decoder),
        encoder=Encoder.load(tiny.encoder),
        ref_decoder=ort.InferenceSession(str(tiny.decoder), options, providers=cpu),
        ref_encoder=ort.InferenceSession(str(tiny.encoder), options, providers=cpu),
        manifest=json.loads(tiny.manifest.read_bytes()),
        metadata={"decoder": _metadata(tiny.decoder), "encoder": _metadata(tiny.encoder)},
        payload=torch.load(tiny.model, weights_only=True),
        env={
            "VAE_DATA_DIR": str(tiny.data),
            "XDG_CACHE_HOME": str(scratch / "cache"),
            "VAE_DEBUG": None,
            "VAE_TUNE_THREADS": "0",
        },
    )

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a property test tried to reach the network")

    assert made.decoder.latent_dim == LATENT, "the strategies here are written for latent size 2"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and steady on a busy machine
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(urllib.request, "urlopen", no_network)
            yield made
    finally:
        torch.set_num_threads(threads)


# -- references: what a correct answer is, computed without the code under test -------------------


def _is_int(value: Any, low: int, high: float = math.inf) -> bool:
    """`check_int`'s documented rule: an integer (not a bool) in [low, high]."""
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool | np.bool_)
        and low <= int(value) <= high
    )


def _is_real(value: Any, low: float, high: float) -> bool:
    """`check_float`'s documented rule: a real number (not a bool), finite, in [low, high]."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return False
    number = float(value)
    return math.isfinite(number) and low <= number <= high


def ref_decode(kit: Kit, z: np.ndarray) -> np.ndarray:
    """Decode float32 latents (N, d) one row per onnxruntime run: (N, 1, 28, 28)."""
    rows = [kit.ref_decoder.run(None, {"z": z[i : i + 1]})[0] for i in range(z.shape[0])]
    return np.concatenate(rows) if rows else np.empty((0, 1, 28, 28), np.float32)


def ref_encode(kit: Kit, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode float32 images (N, 1, 28, 28) one row per run: mu, logvar, each (N, d)."""
    d = kit.encoder.latent_dim
    mus, logvars = [np.empty((0, d), np.float32)], [np.empty((0, d), np.float32)]
    for i in range(x.shape[0]):
        mu, logvar = kit.ref_encoder.run(None, {"image": x[i : i + 1]})
        mus.append(mu)
        logvars.append(logvar)
    return np.concatenate(mus), np.concatenate(logvars)


def documented_latents(z: Any, latent_dim: int) -> np.ndarray | None:
    """Latents as `Decoder.decode` documents them: numbers (N, latent_dim), finite as float32;
    the float32 array, or None when the rules refuse them."""
    array = np.asarray(z)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != latent_dim:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        z32 = array.astype(np.float32)
    return z32 if np.isfinite(z32).all() else None


def documented_images(images: Any) -> np.ndarray | None:
    """Images as `Encoder.encode` documents them: uint8 0-255 or float in [0, 1], of shape
    (N, 28, 28), (N, 1, 28, 28) or (28, 28); float32 (N, 1, 28, 28), or None when refused."""
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]
    shaped = array.ndim in (3, 4) and array.shape[-2:] == (28, 28)
    if not shaped or (array.ndim == 4 and array.shape[1] != 1):
        return None
    if array.dtype == np.uint8:
        x = array.astype(np.float32) / np.float32(255)
    elif array.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            x = array.astype(np.float32)
        if not np.isfinite(x).all() or (x.size and (x.min() < 0 or x.max() > 1)):
            return None
    else:
        return None
    return x.reshape(-1, 1, 28, 28)


def documented_uint8(images: Any) -> np.ndarray | None:
    """`to_uint8`'s rules: uint8 as is, float clipped to [0, 1] and scaled (NaN refused), of shape
    (N, 1, H, W), (N, H, W) or (H, W) with H, W >= 1; or None when refused."""
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or min(array.shape[1:]) < 1:
        return None
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind != "f" or not np.isfinite(array).all():
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def documented_latent_draw(n: int, d: int, seed: int, temperature: float) -> np.ndarray:
    """README's contract: default_rng(seed), float64 standard normals in row-major order, times
    the temperature, cast to float32."""
    z = np.random.default_rng(seed).standard_normal((int(n), int(d))) * float(temperature)
    return z.astype(np.float32)


@dataclass
class Outcome:
    """What one call did: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


def attempt(call: Callable[[], Any], seconds: float = 30) -> Outcome:
    """Run `call` under the watchdog. A VaeError is an outcome; any other exception fails the
    property at once (that is the point of section 5)."""
    try:
        with watchdog(seconds):
            return Outcome(value=call())
    except VaeError as exc:
        return Outcome(error=exc)


def _note(text: str) -> None:
    """Hypothesis' note() (shown with a failing example), also callable outside a property."""
    if currently_in_test_context():
        note(text)


def refused(result: Outcome) -> bool:
    """The call raised a VaeError (attempt() lets nothing else through); counted in Hypothesis'
    statistics as "refused: <error type>" or "answered"."""
    if currently_in_test_context():
        event(f"refused: {type(result.error).__name__}" if result.error else "answered")
    return result.error is not None


# -- strategies: values from every corner ---------------------------------------------------------


def _names(*texts: Any) -> list[Any]:
    """The words of `texts` (str or bytes): a compact way to write a list of names."""
    return [word for text in texts for word in text.split()]


DTYPES = [
    np.dtype(name).type
    for name in _names("uint8 int8 int16 int32 int64 uint16 uint64 float16 float32 float64 bool")
] + [np.complex64]
HUGE_INTS = [2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 + 1, 10**30, -(2**63) - 1]
WRONG_TYPES: list[Any] = [None, "abc", "3", b"\x00\x01", 2.5, float("nan"), True, [], [3], {}]


def wide_ints(
    small: tuple[int, int] = (-3, 12), refused_above: int | None = None
) -> SearchStrategy:
    """Integers from -2**70 to 2**70, mostly small, with the int64 edges; when `refused_above` is
    given, the valid but large values between the small range and it are left out (they would be
    enormous jobs)."""
    low, high = small
    ints = st.one_of(
        st.integers(low, high),
        st.sampled_from([-1, 0, 1, 2, *HUGE_INTS]),
        st.integers(-(2**70), 2**70),
    )
    if refused_above is not None:
        ints = ints.filter(lambda v: not high < v <= refused_above)
    return ints


def ints_or_junk(
    small: tuple[int, int] = (-3, 12), refused_above: int | None = None, *, numpy: bool = True
) -> SearchStrategy:
    """`wide_ints`, numpy integers (small and huge), and values of the wrong type."""
    numpy_ints = st.one_of(
        st.integers(small[0], small[1]).map(np.int64),
        st.sampled_from([2**31, 2**62, 2**63 - 1, -(2**63)]).map(np.int64),
    )
    return st.one_of(
        wide_ints(small, refused_above),
        *([numpy_ints] if numpy else []),
        st.sampled_from(WRONG_TYPES),
    )


def mostly(
    valid: SearchStrategy[Any], wild: SearchStrategy[Any], weight: int = 2
) -> SearchStrategy[Any]:
    """Valid values `weight` times out of `weight` + 1, wild ones otherwise, so that with
    several arguments the correct-answer branch of a property is still exercised often.
    (st.one_of(valid, valid, wild) would not weigh: one_of drops repeated strategies.)"""
    return st.sampled_from([True] * weight + [False]).flatmap(lambda ok: valid if ok else wild)


def reals_or_junk(*, numpy: bool = True) -> SearchStrategy:
    """Floats of every kind (NaN, inf, subnormal, huge), integers, numpy floats, wrong types."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(0, 3),
        st.sampled_from([0, 1, 1000, 1000.0001, 1e-320, -0.0, 10**400]),
        *([st.floats(0, 2, width=16).map(np.float16)] if numpy else []),
        st.sampled_from(WRONG_TYPES),
    )


def _elements(dtype: np.dtype, low: float, high: float) -> SearchStrategy:
    """Array elements: for floats often inside [low, high] (so that valid inputs are common),
    otherwise anything the dtype holds (NaN, inf, extremes)."""
    if dtype.kind == "f":
        width, top = dtype.itemsize * 8, float(np.finfo(dtype).max)
        inside = st.floats(max(low, -top), min(high, top), width=width)
        return st.one_of(inside, npst.from_dtype(dtype))
    return npst.from_dtype(dtype)


@st.composite
def arrays(
    draw: st.DrawFn,
    shapes: SearchStrategy[tuple[int, ...]],
    dtypes: Sequence[type] = DTYPES,
    low: float = -3.0,
    high: float = 3.0,
) -> np.ndarray:
    """A numpy array of a drawn dtype and shape, elements from `_elements`."""
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    shape = draw(shapes)
    return draw(npst.arrays(dtype, shape, elements=_elements(dtype, low, high)))


NON_ARRAYS = st.sampled_from(
    [None, "abc", 3, 2.5, True, [], [1.0, 2.0], [[0.5, 0.5]], {"a": 1}, b"\x00" * 4, object()]
)

# -- the case folder a command runs in ------------------------------------------------------------


def make_case(kit: Kit) -> tuple[Path, Path]:
    """A fresh folder `root` holding `root/work`, the command's current folder, filled with what
    a user's folder holds: the graphs, manifest, model.pt and data, images, older outputs, a
    sub-folder, a symlink and a FIFO. Returns (root, work)."""
    root = Path(tempfile.mkdtemp(prefix="case-", dir=kit.scratch))
    work = root / "work"
    work.mkdir()
    tiny = kit.tiny
    for source in (tiny.decoder, tiny.encoder, tiny.manifest, tiny.model):
        shutil.copy(source, work / source.name)
    shutil.copytree(tiny.data, work / "data")
    shutil.copy(kit.pool / "digit.png", work / "digit.png")
    shutil.copy(kit.pool / "photo.png", work / "photo.png")
    shutil.copy(tiny.data / "t10k-images-idx3-ubyte.gz", work / "digits.gz")
    (work / "keep.txt").write_text("keep me\n")
    (work / "samples.png").write_bytes(b"an older samples.png\n")
    (work / "empty.png").write_bytes(b"")
    (work / "sub").mkdir()
    (work / "sub" / "old.png").write_bytes(b"an older picture\n")
    (work / "link.onnx").symlink_to("decoder.onnx")
    os.mkfifo(work / "fifo")
    return root, work


@dataclass
class Effects:
    """What a command may change in its case folder when it succeeds (keys relative to the case
    root, as `tree` names them): these files, and `sample_*.png` files in these folders."""

    files: set[str]
    folders: set[str] = field(default_factory=set)

    def may_change(self, key: str) -> bool:
        if key in self.files:
            return True
        for folder in self.folders:
            rest = key[len(folder) + 1 :] if folder != "." else key
            if (folder == "." or key.startswith(folder + "/")) and "/" not in rest:
                return rest.startswith("sample_")
        return False

    def may_add(self, key: str) -> bool:
        """A new entry: an output, or a folder made on the way to one."""
        made = self.files | self.folders
        return self.may_change(key) or any(m == key or m.startswith(key + "/") for m in made)


def _key(root: Path, work: Path, value: str, *, real: bool = False) -> str:
    """The `tree` key of path `value` as given on the command line in `work`."""
    joined = os.path.join(work, value)
    path = os.path.realpath(joined) if real else os.path.normpath(joined)
    return os.path.relpath(path, root)


def effects(
    root: Path,
    work: Path,
    outputs: Sequence[str],
    inputs: Sequence[str],
    folders: Sequence[str] = (),
) -> Effects:
    """The Effects of a command that writes `outputs` (and sample files into `folders`) and
    reads `inputs`: an input may never change, whatever the outputs are called."""
    protected = {_key(root, work, p, real=r) for p in inputs for r in (False, True)}
    files = {_key(root, work, p) for p in outputs} - protected
    return Effects(files, {_key(root, work, f) for f in folders})


def check_cli(
    result: Result,
    prog: str,
    before: dict[str, bytes | str],
    after: dict[str, bytes | str],
    allowed: Effects,
    *,
    codes: Sequence[int] = (0, 1, 2),
    keeps_on_failure: bool = False,
) -> int:
    """The promises of issue 9, section 4, for one run: an exit code in `codes`; no traceback,
    no internal error; on failure exactly one line `prog: error: ...` on stderr; no staging
    folder or backup left; files that existed before unchanged unless the run succeeded (or,
    with `keeps_on_failure`, committed some epochs before failing) and they are its outputs.
    Returns the exit code."""
    code, out, err = outcome(result)
    text = out + err
    if currently_in_test_context():
        event(f"exit {code}")
    _note(f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    assert code in codes, f"exit {code}, expected one of {codes}: {text[-2000:]}"
    assert len(out.splitlines()) <= 20, out
    lines = err.strip().splitlines()
    if code != 0:
        assert len(lines) == 1, err
        assert re.match(rf"^{re.escape(prog)}: error: \S", lines[0]), lines[0]
    else:
        assert not lines, err
    left = [k for k in after if any(p.startswith((".mnist-vae-", ".old-")) for p in k.split("/"))]
    assert not left, f"left behind: {left}"
    changes = code == 0 or (keeps_on_failure and code == 1)
    for key, value in before.items():
        if after.get(key) != value:
            assert changes and allowed.may_change(key), f"{key} changed or vanished (exit {code})"
    for key in after.keys() - before.keys():
        assert changes and allowed.may_add(key), f"{key} appeared (exit {code})"
    return code


def run_cli(
    kit: Kit, app: typer.Typer, prog: str, args: list[str], work: Path, seconds: float = 60
) -> Result:
    """Invoke a command in-process, in `work`, under the watchdog."""
    _note(f"{prog} {' '.join(args)}")
    with inside(work), watchdog(seconds):
        return CliRunner().invoke(app, args, prog_name=prog, env=kit.env)


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


def words(*valid: str) -> SearchStrategy[str]:
    """Texts for a word option: the valid ones and near misses."""
    return st.sampled_from([*valid, "", "abc", " x", "-1", "é", *(v.upper() for v in valid)])


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
TRAIN_OUTPUTS = OUTPUT_FILES  # model.pt, metrics.jsonl, samples.png, ... as vae-train writes


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
EXPORT_FILES = ("encoder.onnx", "decoder.onnx", "manifest.json")
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


def resume_args(kit: Kit) -> list[str]:
    """`vae-train --resume model.pt` for one more epoch into run2/, with the settings the tiny
    model.pt was trained with (so only what was tampered with can make it fail)."""
    run, config = kit.payload["run"], kit.payload["config"]
    settings_ = {
        "--epochs": kit.payload["epoch"] + 1,
        "--batch-size": run["batch_size"],
        "--lr": repr(run["lr"]),
        "--seed": run["seed"],
        "--hidden-dim": config["hidden_dim"],
        "--latent-dim": config["latent_dim"],
    }
    given = [text for option, value in settings_.items() for text in (option, str(value))]
    fixed = _names("--device cpu --data-dir data --quiet")
    return ["--resume", "model.pt", "--out", "run2", *given, *fixed]


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


# -- 3. the Python API: a correct answer or a VaeError --------------------------------------------

LATENT = 2  # the tiny model's latent size (tests/faults/conftest.py)
ROWS = st.one_of(st.integers(0, 5), st.just(70))
FLOATS_AND_INTS = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64]


def latent_shapes(d: int) -> SearchStrategy[tuple[int, ...]]:
    """(N, d) mostly, and every wrong shape near it."""
    return st.one_of(
        ROWS.map(lambda n: (n, d)),
        st.tuples(ROWS, st.integers(0, 4)),
        st.sampled_from([(), (d,), (1, d, 1), (2, 0), (0, 0)]),
    )


def image_shapes() -> SearchStrategy[tuple[int, ...]]:
    """(N, 28, 28), (N, 1, 28, 28), (28, 28), and near misses."""
    n = st.integers(0, 3)
    return st.one_of(
        n.map(lambda k: (k, 28, 28)),
        n.map(lambda k: (k, 1, 28, 28)),
        st.just((28, 28)),
        st.sampled_from([(1, 28, 27), (1, 2, 28, 28), (784,), (), (1, 28, 28, 1)]),
    )


@bounded(70)
@given(
    z=mostly(
        arrays(ROWS.map(lambda n: (n, LATENT)), dtypes=FLOATS_AND_INTS, low=-5, high=5),
        st.one_of(arrays(latent_shapes(LATENT), low=-5, high=5), NON_ARRAYS),
    ),
    batch_size=mostly(st.one_of(st.integers(1, 8), st.just(65_536)), ints_or_junk((-2, 8))),
)
def test_decode(kit: Kit, z: Any, batch_size: Any) -> None:
    """Decoder.decode: images equal to decoding row by row, or a VaeError."""
    result = attempt(lambda: kit.decoder.decode(z, batch_size=batch_size))
    z32 = documented_latents(z, LATENT)
    if z32 is None or not _is_int(batch_size, 1, 1 << 16):
        assert refused(result), f"accepted {z!r} with batch size {batch_size!r}"
        return
    expected = ref_decode(kit, z32)
    if not np.isfinite(expected).all():  # the graph overflows: refused, never passed on
        assert refused(result)
        return
    assert not refused(result), result.error
    images = result.value
    assert images.dtype == np.float32 and images.shape == (z32.shape[0], 1, 28, 28)
    assert np.isfinite(images).all() and ((images >= 0) & (images <= 1)).all()
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)


@bounded(30)
@given(
    batches=st.lists(
        mostly(
            arrays(ROWS.map(lambda n: (n, LATENT)), dtypes=FLOATS_AND_INTS),
            st.one_of(arrays(latent_shapes(LATENT)), NON_ARRAYS),
        ),
        max_size=3,
    )
)
def test_iter_decode(kit: Kit, batches: list[Any]) -> None:
    """Decoder.iter_decode: one image batch per latent batch, each equal to decoding its rows
    one by one; a bad batch is a VaeError."""
    result = attempt(lambda: list(kit.decoder.iter_decode(batches)))
    wanted = [documented_latents(z, LATENT) for z in batches]
    expected = [ref_decode(kit, z) for z in wanted if z is not None]
    bad = any(z is None for z in wanted) or not all(np.isfinite(e).all() for e in expected)
    if bad:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert len(result.value) == len(expected)
    for images, reference in zip(result.value, expected, strict=True):
        assert images.dtype == np.float32 and images.shape == reference.shape
        np.testing.assert_allclose(images, reference, rtol=0, atol=1e-5)


@bounded(50)
@given(
    how=st.sampled_from(["sample", "iter_samples"]),
    n=mostly(st.integers(0, 6), ints_or_junk((-2, 6), refused_above=10**9)),
    seed=mostly(st.integers(0, 2**63 - 1), ints_or_junk((-2, 5))),
    temperature=mostly(st.floats(0, 1000), reals_or_junk()),
    batch_size=mostly(st.integers(1, 4), ints_or_junk((-1, 4))),
)
def test_sample(kit: Kit, how: str, n: Any, seed: Any, temperature: Any, batch_size: Any) -> None:
    """Decoder.sample / iter_samples: README's latents (default_rng(seed) normals times the
    temperature, as float32), decoded, equal to decoding them row by row; or a VaeError."""
    if how == "sample":
        result = attempt(lambda: kit.decoder.sample(n, seed, temperature))
    else:
        result = attempt(lambda: list(kit.decoder.iter_samples(n, seed, temperature, batch_size)))
    valid = _is_int(n, 0, 10**9) and _is_int(seed, 0, 2**63 - 1) and _is_real(temperature, 0, 1e3)
    if how == "iter_samples":
        valid = valid and _is_int(batch_size, 1, 1 << 16)
    if not valid:
        assert refused(result), f"accepted n={n!r} seed={seed!r} t={temperature!r}"
        return
    expected = ref_decode(kit, documented_latent_draw(n, LATENT, seed, temperature))
    assert not refused(result), result.error
    if how == "iter_samples":
        sizes = [b.shape[0] for b in result.value]
        assert all(0 < s <= batch_size for s in sizes) and sum(sizes) == n
        images = np.concatenate(result.value) if result.value else expected[:0]
    else:
        images = result.value
    assert images.dtype == np.float32 and images.shape == (n, 1, 28, 28)
    np.testing.assert_allclose(images, expected, rtol=0, atol=1e-5)


@bounded(50)
@given(
    images=mostly(
        st.one_of(
            arrays(image_shapes(), dtypes=[np.uint8], low=0, high=1),
            arrays(image_shapes(), dtypes=[np.float16, np.float32, np.float64], low=0, high=1),
        ),
        st.one_of(arrays(image_shapes(), low=0, high=1), NON_ARRAYS),
    ),
    batch_size=mostly(st.integers(1, 4), ints_or_junk((-1, 4))),
    pair=st.booleans(),
)
def test_encode_and_reconstruct(kit: Kit, images: Any, batch_size: Any, pair: bool) -> None:
    """Encoder.encode and reconstruct: the documented conversion (uint8 / 255, float in [0, 1]
    as it is, anything else refused), equal to encoding (and decoding) row by row."""
    x = documented_images(images)
    if pair:
        result = attempt(lambda: reconstruct(kit.encoder, kit.decoder, images))
        valid = x is not None
    else:
        result = attempt(lambda: kit.encoder.encode(images, batch_size=batch_size))
        valid = x is not None and _is_int(batch_size, 1, 1 << 16)
    if not valid:
        assert refused(result), f"accepted {np.asarray(images).dtype} {np.shape(images)}"
        return
    assert not refused(result), result.error
    mu, logvar = ref_encode(kit, x)
    if pair:
        assert result.value.dtype == np.float32 and result.value.shape == x.shape
        np.testing.assert_allclose(result.value, ref_decode(kit, mu), rtol=0, atol=1e-5)
        return
    got_mu, got_logvar = result.value
    for got, want in ((got_mu, mu), (got_logvar, logvar)):
        assert got.dtype == np.float32 and got.shape == (x.shape[0], LATENT)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@bounded(60)
@given(
    n=mostly(st.integers(0, 6), ints_or_junk((-2, 6), refused_above=10**9), 4),
    d=mostly(st.one_of(st.integers(1, 6), st.just(4096)), ints_or_junk((-1, 6)), 4),
    seed=mostly(st.integers(0, 2**63 - 1), ints_or_junk((-2, 5)), 4),
    temperature=mostly(st.floats(0, 1000), reals_or_junk(), 4),
    batch_size=st.one_of(st.none(), st.integers(1, 4), ints_or_junk((-1, 4))),
)
def test_sample_latents(n: Any, d: Any, seed: Any, temperature: Any, batch_size: Any) -> None:
    """sample_latents and iter_latents: README's draw exactly, in batches of at most
    batch_size (iter_latents), or a VaeError."""
    if batch_size is None:
        result = attempt(lambda: sample_latents(n, d, seed, temperature))
    else:
        result = attempt(lambda: list(iter_latents(n, d, seed, temperature, batch_size)))
    valid = (
        _is_int(n, 0, 10**9)
        and _is_int(d, 1, 4096)
        and _is_int(seed, 0, 2**63 - 1)
        and _is_real(temperature, 0, 1000)
        and (batch_size is None or _is_int(batch_size, 1, 1 << 16))
    )
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    expected = documented_latent_draw(n, d, seed, temperature)
    if batch_size is None:
        z = result.value
    else:
        sizes = [b.shape[0] for b in result.value]
        assert all(0 < s <= batch_size for s in sizes) and sum(sizes) == n
        z = np.concatenate(result.value) if result.value else expected[:0]
    assert z.dtype == np.float32 and z.shape == (n, d)
    np.testing.assert_array_equal(z, expected)


VECTORS = st.one_of(
    arrays(
        st.one_of(st.integers(0, 4).map(lambda k: (k,)), st.sampled_from([(), (1, 2), (2, 1)])),
        low=-1e3,
        high=1e3,
    ),
    NON_ARRAYS,
)
METHODS = st.one_of(st.sampled_from(["lerp", "slerp", "SLERP", "", " lerp"]), NON_ARRAYS)


def _documented_vector(z: Any) -> np.ndarray | None:
    """interpolate's rule for an end: a non-empty 1-D numeric vector, finite as float64, whose
    norm is within float32's range (so is every latent on the path)."""
    array = np.asarray(z)
    if array.dtype.kind not in "fiu" or array.ndim != 1 or array.size == 0:
        return None
    a = array.astype(np.float64)
    if not np.isfinite(a).all():
        return None
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(a))
    return a if norm <= float(np.finfo(np.float32).max) else None


@bounded(80)
@st.composite
def latent_pairs(draw: st.DrawFn) -> tuple[Any, Any]:
    """Two ends of the same size (any numeric dtype, values up to 1e3, or up to float64's
    range), or two of anything."""
    if draw(st.booleans()):
        return draw(VECTORS), draw(VECTORS)
    d = draw(st.integers(1, 4))
    wide = draw(st.booleans())
    low, high = (-1e300, 1e300) if wide else (-1e3, 1e3)
    return tuple(  # type: ignore[return-value]
        draw(arrays(st.just((d,)), dtypes=FLOATS_AND_INTS, low=low, high=high)) for _ in "ab"
    )


@given(
    ends=latent_pairs(),
    steps=mostly(st.integers(2, 12), ints_or_junk((-1, 12), refused_above=10_000)),
    method=mostly(st.sampled_from(["lerp", "slerp"]), METHODS),
)
def test_interpolate(ends: tuple[Any, Any], steps: Any, method: Any) -> None:
    """interpolate: (steps, d) float32, finite, from z0 to z1 (lerp: the straight line; slerp:
    norms interpolated linearly), or a VaeError."""
    z0, z1 = ends
    result = attempt(lambda: interpolate(z0, z1, steps, method))
    a, b = _documented_vector(z0), _documented_vector(z1)
    valid = (
        a is not None
        and b is not None
        and a.shape == b.shape
        and _is_int(steps, 2, 10_000)
        and isinstance(method, str)
        and method in ("lerp", "slerp")
    )
    if not valid:
        assert refused(result)
        return
    assert a is not None and b is not None
    assert not refused(result), result.error
    path = result.value
    assert path.dtype == np.float32 and path.shape == (steps, a.size)
    assert np.isfinite(path).all()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    scale = max(na, nb)
    tol = {"rtol": 1e-5, "atol": 1e-5 * scale + 1e-43}
    np.testing.assert_allclose(path[0], a, **tol)
    np.testing.assert_allclose(path[-1], b, **tol)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if method == "lerp":
        np.testing.assert_allclose(path, (1 - t) * a + t * b, **tol)
    elif na > 0 and nb > 0 and abs(float(a @ b) / (na * nb)) < 0.999:
        norms = np.linalg.norm(path.astype(np.float64), axis=1)
        np.testing.assert_allclose(norms, (1 - t[:, 0]) * na + t[:, 0] * nb, **tol)


@bounded(50)
@given(
    rows=mostly(st.integers(1, 12), ints_or_junk((-1, 12), refused_above=10_000), 4),
    cols=mostly(st.integers(1, 12), ints_or_junk((-1, 12), refused_above=10_000), 4),
    temperature=mostly(st.floats(0, 1000), reals_or_junk(), 4),
)
def test_manifold_latents(rows: Any, cols: Any, temperature: Any) -> None:
    """manifold_latents: the rows x cols lattice at the prior's quantiles (i + 0.5) / n, times
    the temperature, x rising to the right, y falling downwards; or a VaeError."""
    result = attempt(lambda: manifold_latents(rows, cols, temperature))
    valid = _is_int(rows, 1, 10_000) and _is_int(cols, 1, 10_000) and _is_real(temperature, 0, 1e3)
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    quantile = NormalDist().inv_cdf
    t = float(temperature)
    xs = [quantile((i + 0.5) / cols) * t for i in range(cols)]
    ys = [quantile((i + 0.5) / rows) * t for i in range(rows)][::-1]
    expected = np.array([(x, y) for y in ys for x in xs], dtype=np.float32).reshape(-1, 2)
    assert result.value.dtype == np.float32 and result.value.shape == (rows * cols, 2)
    np.testing.assert_allclose(result.value, expected, rtol=1e-6, atol=1e-30)


PICTURE_SHAPES = st.one_of(
    st.tuples(st.integers(0, 4), st.just(1), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.integers(0, 5), st.integers(0, 5)),
    st.sampled_from([(), (3,), (2, 2, 1, 3), (1, 1, 1, 1, 1)]),
)
GOOD_PICTURE_SHAPES = st.one_of(
    st.tuples(st.integers(0, 4), st.just(1), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.integers(0, 4), st.integers(1, 4), st.integers(1, 4)),
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
)
PICTURES = mostly(
    arrays(GOOD_PICTURE_SHAPES, dtypes=[np.uint8, np.float32, np.float64], low=-0.5, high=1.5),
    st.one_of(arrays(PICTURE_SHAPES, low=-0.5, high=1.5), NON_ARRAYS),
)


@bounded(80)
@given(images=PICTURES)
def test_to_uint8(images: Any) -> None:
    """to_uint8: uint8 as it is, floats clipped to [0, 1] and rounded, (N, H, W); or a VaeError."""
    result = attempt(lambda: to_uint8(images))
    expected = documented_uint8(images)
    if expected is None:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value.dtype == np.uint8
    np.testing.assert_array_equal(result.value, expected)


def _grid_dims(n_rows: int, n_cols: int, h: int, w: int, padding: int, scale: int) -> tuple:
    return ((n_rows * (h + padding) + padding) * scale, (n_cols * (w + padding) + padding) * scale)


@bounded(80)
@given(
    images=PICTURES,
    rows=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=10**8, numpy=False), 5),
    cols=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=10**8, numpy=False), 5),
    padding=mostly(st.integers(0, 3), ints_or_junk((-1, 3), refused_above=1000, numpy=False), 5),
    scale=mostly(st.integers(1, 3), ints_or_junk((-1, 3), refused_above=64, numpy=False), 5),
)
def test_tile(images: Any, rows: Any, cols: Any, padding: Any, scale: Any) -> None:
    """tile: a black uint8 grid of the documented size with each image in its cell, row by row,
    every pixel repeated `scale` times; or a VaeError."""
    result = attempt(lambda: tile(images, rows, cols, padding, scale))
    pixels = documented_uint8(images)
    valid = (
        pixels is not None
        and _is_int(rows, 1)
        and _is_int(cols, 1)
        and _is_int(padding, 0, 1000)
        and _is_int(scale, 1, 64)
    )
    if valid:
        assert pixels is not None
        n, h, w = pixels.shape
        height, width = _grid_dims(int(rows), int(cols), h, w, int(padding), int(scale))
        valid = n <= int(rows) * int(cols) and height * width <= MAX_GRID_PIXELS
    if not valid:
        assert refused(result)
        return
    assert pixels is not None and not refused(result), result.error
    p, s = int(padding), int(scale)
    n, h, w = pixels.shape
    grid = np.zeros(_grid_dims(int(rows), int(cols), h, w, p, 1), dtype=np.uint8)
    for i in range(n):
        top, left = p + (i // int(cols)) * (h + p), p + (i % int(cols)) * (w + p)
        grid[top : top + h, left : left + w] = pixels[i]
    expected = np.kron(grid, np.ones((s, s), dtype=np.uint8))
    assert result.value.dtype == np.uint8
    np.testing.assert_array_equal(result.value, expected)


@bounded(60)
@given(
    rows=mostly(st.integers(1, 40), ints_or_junk((-1, 40), numpy=False), 5),
    cols=mostly(st.integers(1, 40), ints_or_junk((-1, 40), numpy=False), 5),
    height=mostly(st.integers(1, 40), st.sampled_from(HUGE_INTS[:-1]), 5),
    width=mostly(st.integers(1, 40), st.sampled_from(HUGE_INTS[:-1]), 5),
    padding=mostly(st.integers(0, 5), ints_or_junk((-1, 5), numpy=False), 5),
    scale=mostly(st.integers(1, 5), ints_or_junk((-1, 5), numpy=False), 5),
)
def test_grid_size(rows: Any, cols: Any, height: Any, width: Any, padding: Any, scale: Any) -> None:
    """grid_size: the documented formula in ints within the pixel cap, or a VaeError."""
    result = attempt(lambda: grid_size(rows, cols, height, width, padding, scale))
    valid = (
        _is_int(rows, 1)
        and _is_int(cols, 1)
        and _is_int(padding, 0, 1000)
        and _is_int(scale, 1, 64)
    )
    if valid:
        dims = _grid_dims(int(rows), int(cols), int(height), int(width), int(padding), int(scale))
        valid = dims[0] * dims[1] <= MAX_GRID_PIXELS
    if not valid:
        assert refused(result)
        return
    assert not refused(result), result.error
    assert result.value == dims and all(type(v) is int and v > 0 for v in result.value)


@bounded(50)
@given(
    pixels=mostly(
        arrays(st.lists(st.integers(0, 4), min_size=2, max_size=4).map(tuple), dtypes=[np.uint8]),
        PICTURES,
        5,
    ),
    scale=mostly(st.integers(1, 4), ints_or_junk((-1, 4), refused_above=64)),
)
def test_upscale(pixels: Any, scale: Any) -> None:
    """upscale: every pixel of a uint8 (..., H, W) array repeated scale x scale times, or a
    VaeError for anything else."""
    result = attempt(lambda: upscale(pixels, scale))
    picture = isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim >= 2
    if not _is_int(scale, 1, 64) or not picture:
        assert refused(result)
        return
    assert not refused(result), result.error
    s = int(scale)
    out = result.value
    *lead, h, w = pixels.shape
    assert out.dtype == np.uint8 and out.shape == (*lead, h * s, w * s)
    rows, cols = np.arange(h * s) // s, np.arange(w * s) // s
    np.testing.assert_array_equal(out, pixels[..., rows[:, None], cols[None, :]])


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


def _inode(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names (through symlinks), None when absent."""
    try:
        st_ = os.stat(path)
    except OSError:
        return None
    return st_.st_dev, st_.st_ino


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
    wanted = {"lr": float, "device": str, "precision": str, "binarize": bool}
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


def _adam_internal(path: tuple[Any, ...]) -> bool:
    """A path inside Adam's per-parameter state or its param_groups."""
    return path[:1] == ("optimizer",) and len(path) >= 3


ADAM_DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "exp_avg missing": lambda o: o["state"][0].pop("exp_avg"),
    "step a 2-element tensor": lambda o: o["state"][0].__setitem__("step", torch.zeros(2)),
    "lr a str": lambda o: o["param_groups"][0].__setitem__("lr", "x"),
    "betas of 1": lambda o: o["param_groups"][0].__setitem__("betas", (0.9,)),
    "eps None": lambda o: o["param_groups"][0].__setitem__("eps", None),
}


@pytest.mark.parametrize("damage", sorted(ADAM_DAMAGE))
def test_regression_resume_adam_state(kit: Kit, damage: str) -> None:
    """model.pt whose optimizer state lacks a moment, or whose param_groups hold a bad lr,
    betas or eps: optimizer.load_state_dict takes it, _Run._restore checks only the moments'
    shapes, and the first Adam step raises "internal error (KeyError: 'exp_avg')" (or a
    TypeError/ValueError/RuntimeError from torch)."""
    payload = copy.deepcopy(kit.payload)
    ADAM_DAMAGE[damage](payload["optimizer"])
    root, work = make_case(kit)
    try:
        torch.save(payload, work / "model.pt")
        allowed = effects(root, work, [f"run2/{n}" for n in TRAIN_OUTPUTS], ["model.pt"])
        before = tree(root)
        result = run_cli(kit, train_cli.app, "vae-train", resume_args(kit), work)
        check_cli(result, "vae-train", before, tree(root), allowed, codes=(1, 2))
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("key", ["lr", "batch_size", "seed"])
def test_regression_resume_with_tensor_setting(kit: Kit, key: str) -> None:
    """model.pt whose run.<key> is a 3-element tensor: `vae-train --resume` prints "internal
    error (RuntimeError: Boolean value of Tensor with more than one value is ambiguous)"."""
    payload = copy.deepcopy(kit.payload)
    payload["run"][key] = torch.zeros(3)
    root, work = make_case(kit)
    try:
        torch.save(payload, work / "model.pt")
        allowed = effects(root, work, [f"run2/{n}" for n in TRAIN_OUTPUTS], ["model.pt"])
        before = tree(root)
        result = run_cli(kit, train_cli.app, "vae-train", resume_args(kit), work)
        check_cli(result, "vae-train", before, tree(root), allowed, codes=(1, 2))
    finally:
        shutil.rmtree(root)
