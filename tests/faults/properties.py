"""What the property-based fault tests share: bounded Hypothesis settings, a watchdog, the kit
(tiny model, sample inputs, reference sessions), references computed without the code under
test, wide strategies, and the case folder a command runs in.

Bounded for CI: no example database (nothing written into the checkout), derandomized (the same
examples on every run), no per-example deadline but a watchdog (SIGALRM) that fails any call
running past its limit, and values that would be valid but enormous are not drawn.
`VAE_PROPERTY_SCALE=4` multiplies every example count and `VAE_PROPERTY_EXPLORE=1` draws fresh
random examples, for a longer hunt by hand."""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import re
import shutil
import signal
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import typer
from harness import Tiny
from helpers import outcome
from hypothesis import HealthCheck, event, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as npst
from hypothesis.strategies import SearchStrategy
from PIL import Image
from typer.testing import CliRunner, Result

from vae_runtime.errors import VaeError
from vae_runtime.idx import write_idx
from vae_runtime.session import Decoder, Encoder
from vae_train.training import OUTPUT_FILES

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
    property at once (the API promises typed errors, nothing else)."""
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
    """The promises every command keeps, for one run: an exit code in `codes`; no traceback,
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


def words(*valid: str) -> SearchStrategy[str]:
    """Texts for a word option: the valid ones and near misses."""
    return st.sampled_from([*valid, "", "abc", " x", "-1", "é", *(v.upper() for v in valid)])


TRAIN_OUTPUTS = OUTPUT_FILES  # model.pt, metrics.jsonl, samples.png, ... as vae-train writes


EXPORT_FILES = ("encoder.onnx", "decoder.onnx", "manifest.json")


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


def _adam_internal(path: tuple[Any, ...]) -> bool:
    """A path inside Adam's per-parameter state or its param_groups."""
    return path[:1] == ("optimizer",) and len(path) >= 3


LATENT = 2  # the tiny model's latent size (tests/faults/conftest.py)


PICTURE_SHAPES = st.one_of(
    st.tuples(st.integers(0, 4), st.just(1), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
    st.tuples(st.integers(0, 5), st.integers(0, 5)),
    st.sampled_from([(), (3,), (2, 2, 1, 3), (1, 1, 1, 1, 1)]),
)
