"""ONNX Runtime sessions for the exported graphs: load, check against the contract, run.

`Decoder.load(path)` and `Encoder.load(path)` read the file once, check it against the
`manifest.json` beside it (when there is one: a file it does not list, or whose SHA-256 differs,
is refused), build the session from the bytes read, and check the graph's metadata role,
input/output names, dtypes and shapes against `contract.py`. Whatever is wrong comes back as a
ModelFileError saying what was expected and what was found, never as an onnxruntime stack trace.
Arguments are checked the same way: a wrong shape, dtype or range is an InvalidArgumentError,
never a wrong answer.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from . import rewrite
from .contract import (
    DECODER,
    DECODER_INPUT,
    DECODER_LOGITS,
    DECODER_OUTPUT,
    ENCODER,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    IMAGE_SHAPE,
    FileEntry,
    GraphInfo,
    Interface,
    Manifest,
    TensorDecl,
    parse_metadata,
)
from .errors import (
    InvalidArgumentError,
    ModelFileError,
    NumericalError,
    as_array,
    check_int,
    check_path,
)
from .sampling import check_batch_size, check_in_memory, iter_latents

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated at run time
    from typing_extensions import Self

DEFAULT_PROVIDER = "CPUExecutionProvider"
DEFAULT_BATCH_SIZE = 1024  # rows per run: large enough to keep the matmuls efficient, ~3 MB out
_ONE_BITS = int(np.float32(1.0).view(np.uint32))  # 0x3F800000
LATENT_LIMIT = 1e4  # |z| past this is no sample of the prior; a NaN image then blames z
_MAX_GRAPH_BYTES = 1 << 31  # protobuf's own limit for one serialized model
_FLOAT = "tensor(float)"
_Args = tuple[tuple[str, tuple[int, ...]], ...]  # (name, dims after the batch axis) per argument


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (macOS and Windows have no affinity call)
        return os.cpu_count() or 1


def session_options(threads: int | None = None, *, spinning: bool = True) -> ort.SessionOptions:
    """The options every mnist-vae session runs with (export verification included): all graph
    optimisations, sequential, `threads` intra-op threads (1..cpu_count(), default: all).
    `spinning` False stops the threads spinning between runs, for callers that do numpy work
    of their own between runs (the Scorer) or run two graphs in turns: one graph's spinning
    threads would take the cores the other's need (docs/api.md measures it)."""
    if threads is not None:
        check_int("threads", threads, 1, cpu_count())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Two matmuls in a chain: nothing runs in parallel across nodes, so one inter-op thread and
    # sequential execution; the parallelism is inside each matmul, one thread per core.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or cpu_count()
    options.log_severity_level = 3  # errors only: warnings would break the one-line contract
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    exact = rewrite.exact_option()  # int8 graphs with signed weights: exact on x86 without VNNI
    if exact is not None:
        options.add_session_config_entry(*exact)
    # The process-wide logger too: onnxruntime logs through it before a session's own logger
    # exists (environment set-up, device discovery), and its warnings are not the user's to read.
    ort.set_default_logger_severity(3)
    return options


def check_providers(providers: Sequence[str] | None) -> list[str]:
    """The execution providers to ask for, the CPU last; an unknown name is refused with the
    list of those this onnxruntime has."""
    if not providers:
        return [DEFAULT_PROVIDER]
    available = ort.get_available_providers()
    for name in providers:
        if name not in available:
            raise InvalidArgumentError(
                f"execution provider {name!r} is not available; available providers: "
                f"{', '.join(available)}"
            )
    # Nodes an accelerator cannot run fall back to the CPU, as onnxruntime itself recommends.
    return [*providers, DEFAULT_PROVIDER] if DEFAULT_PROVIDER not in providers else list(providers)


def _new_session(
    data: bytes, options: ort.SessionOptions, providers: list[str]
) -> tuple[ort.InferenceSession, bytes]:
    """A session of the file's bytes as rewrite.prepare makes them for this CPU (signed int8
    weights where it multiplies them exactly and faster), and the bytes it was built from. Should
    onnxruntime refuse a rewrite, the file's own bytes are used (exact, only slower)."""
    prepared = rewrite.prepare(data)
    try:
        return ort.InferenceSession(prepared, options, providers=providers), prepared
    except Exception:
        if prepared is data:
            raise
    return ort.InferenceSession(data, options, providers=providers), data


def _read_graph(path: Path) -> tuple[bytes, Manifest | None]:
    """The file's bytes, checked against the manifest.json beside it, if any (returned too)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelFileError(
            f"{path}: no such file; export one with `vae-export model.pt`"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path}: is not a regular file, expected an .onnx graph")
    if st.st_size > _MAX_GRAPH_BYTES:
        raise ModelFileError(f"{path}: {st.st_size:,} bytes, larger than any ONNX graph can be")
    try:
        data = path.read_bytes()
    except OSError as exc:  # pragma: no cover  (stat just passed: gone meanwhile, or not root)
        raise ModelFileError(f"{path}: cannot be read: {exc.strerror}") from None
    manifest = Manifest.beside(path)
    if manifest is not None:
        manifest.verify(path, data)
    return data, manifest


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(d if isinstance(d, str) else str(d) for d in shape) + "]"


def _check_arg(path: Path, kind: str, arg: Any, name: str, dims: tuple[int, ...]) -> None:
    """One graph input or output: its name, float32, a dynamic batch axis, then `dims`."""
    want = _shape_text(["batch", *dims])
    if arg.name != name or arg.type != _FLOAT:
        raise ModelFileError(
            f"{path}: {kind} {arg.name!r} {arg.type}, expected {name!r} tensor(float) {want}"
        )
    shape = list(arg.shape)
    batch_ok = bool(shape) and not isinstance(shape[0], int)
    if not batch_ok or tuple(shape[1:]) != dims:
        raise ModelFileError(
            f"{path}: {kind} {name!r} has shape {_shape_text(shape)}, expected {want} "
            "with a dynamic batch axis"
        )


class _Graph:
    """What encoder and decoder share: the checked session, its path, metadata and precision."""

    interface: Interface  # the contract's declaration of the role's inputs and outputs
    role = ""
    # Output subsets fetched often enough to get a session of their own, built on first use
    # (rewrite.py: in the full graph an output not fetched still costs a copy per run).
    view_outputs: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self, session: ort.InferenceSession, path: Path, info: GraphInfo, entry: FileEntry | None
    ) -> None:
        self._session = session
        self._views: dict[tuple[str, ...], ort.InferenceSession] = {}  # output names -> session
        self._source: tuple[bytes, ort.SessionOptions, list[str]] | None = None
        self.path = path
        self.info = info
        self.precision = info.precision  # "fp32", "int8" or "fp16"; float32 in and out always
        self.entry = entry  # what manifest.json says of the file (quality figures), if present
        self.metadata: dict[str, str] = {}  # the graph's metadata_props, as read (load sets it)
        self.sha256 = ""  # of the bytes the session was built from (load sets it)
        # The interface's outputs this graph has (optional ones may be absent), declared order.
        self.outputs: tuple[TensorDecl, ...] = tuple(
            t for t in self.interface.outputs if not t.optional
        )

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector, as the graph's metadata and shapes state it."""
        return self.info.latent_dim

    @classmethod
    def _io(cls, latent_dim: int) -> tuple[_Args, _Args]:
        """The (name, dims after the batch axis) of each input and output the contract asks for."""
        inputs, outputs = cls.interface.inputs, cls.interface.outputs
        return (
            tuple((t.name, t.shape(latent_dim)) for t in inputs),
            tuple((t.name, t.shape(latent_dim)) for t in outputs),
        )

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> Self:
        """Load `path` and check it against the contract. `providers`: onnxruntime execution
        providers (default CPU); `threads`: intra-op threads (default: one per available core);
        `spinning`: see `session_options`. Raises ModelFileError for a wrong, foreign, corrupt
        or modified file."""
        path = check_path("graph path", path)
        options = session_options(threads, spinning=spinning)
        chosen = check_providers(providers)
        data, manifest = _read_graph(path)
        try:
            session, prepared = _new_session(data, options, chosen)
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidProtobuf, ...)
            detail = " ".join(str(exc).split())[:200]
            raise ModelFileError(
                f"{path}: not a loadable ONNX graph, expected an mnist-vae {cls.role} "
                f"({type(exc).__name__}: {detail})"
            ) from None
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        info = parse_metadata(metadata, str(path))
        if info.role != cls.role:
            a = {"encoder": "an", "decoder": "a"}
            raise ModelFileError(
                f"{path}: is an mnist-vae {info.role} graph, expected {a[cls.role]} {cls.role} "
                f"(pass {info.role}.onnx where {a[info.role]} {info.role} is asked for)"
            )
        entry = None
        if manifest is not None:
            entry = manifest.files[path.name]
            if entry.role not in ("", cls.role) or manifest.latent_dim != info.latent_dim:
                raise ModelFileError(
                    f"{path}: a {cls.role} of latent size {info.latent_dim}, but {manifest.path} "
                    f"lists it as {entry.role or 'a graph'} of latent size {manifest.latent_dim}"
                )
            if entry.precision != info.precision:
                raise ModelFileError(
                    f"{path}: an {info.precision} graph, but {manifest.path} lists it as "
                    f"{entry.precision}; re-export"
                )
        want_in, want_out = cls._io(info.latent_dim)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        # The declared outputs this graph has: the required ones, in order, then any optional
        # ones it was exported with (a graph from before an optional output lacks it).
        present = tuple(
            t
            for t in cls.interface.outputs
            if not t.optional or t.name in {a.name for a in outputs}
        )
        want_out = tuple((t.name, t.shape(info.latent_dim)) for t in present)
        if len(inputs) != len(want_in) or len(outputs) != len(want_out):
            required = [t.name for t in cls.interface.outputs if not t.optional]
            optional = [t.name for t in cls.interface.outputs if t.optional]
            raise ModelFileError(
                f"{path}: inputs {[a.name for a in inputs]} and outputs "
                f"{[a.name for a in outputs]}, expected {[n for n, _ in want_in]} and "
                f"{required}" + (f" (then optionally {optional})" if optional else "")
            )
        for kind, args, wanted in (("input", inputs, want_in), ("output", outputs, want_out)):
            for arg, (name, dims) in zip(args, wanted, strict=True):
                _check_arg(path, kind, arg, name, dims)
        graph = cls(session, path, info, entry)
        graph.outputs = present
        graph._source = (prepared, options, chosen)  # for the views, built on first use
        graph.metadata = metadata
        graph.sha256 = entry.sha256 if entry is not None else hashlib.sha256(data).hexdigest()
        return graph

    def _run(
        self, feed: dict[str, np.ndarray], names: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """The graph's outputs `names` (default: all it has, in declared order) on `feed`."""
        try:
            if names is None:
                return list(self._session.run(None, feed))
            key = tuple(names)
            session = self._views.get(key) or self._view(key)
            return list(session.run(list(names), feed))
        except Exception as exc:  # a graph that loads but cannot run on this input
            detail = " ".join(str(exc).split())[:200]
            raise ModelFileError(f"{self.path}: running the graph failed: {detail}") from None

    def _view(self, names: tuple[str, ...]) -> ort.InferenceSession:
        """The session that fetches `names` at least cost: for a subset in `view_outputs`, one
        of the graph without its other outputs (the first call builds it, ~1 ms); else the full
        one."""
        session = self._session
        if names in self.view_outputs and self._source is not None:
            data, options, providers = self._source
            others = {t.name for t in self.outputs} - set(names)
            view = rewrite.without_outputs(data, others) if others else None
            if view is not None:
                session = ort.InferenceSession(view, options, providers=providers)
        # Two threads may both build it; both sessions are the same graph, and one is kept.
        return self._views.setdefault(names, session)

    def _finite(self, array: np.ndarray, name: str, given: np.ndarray) -> np.ndarray:
        # min and max: two reads and no temporary (isfinite() writes a bool array, a float sum
        # is pairwise and slower); a NaN propagates into both, and an infinity is one of them.
        if array.size == 0 or (math.isfinite(array.min()) and math.isfinite(array.max())):
            return array
        largest = float(np.abs(given).max(initial=0.0))
        if largest > LATENT_LIMIT:
            raise InvalidArgumentError(
                f"inputs as large as {largest:.3g} make {self.path} overflow to NaN; they are far "
                f"outside the prior (|z| of a sample stays below ~10): scale them down"
            )
        raise NumericalError(
            f"{self.path}: output {name!r} contains NaN or infinite values; the graph is broken "
            "(re-export it from a healthy model.pt)"
        )


def _latents(z: Any, latent_dim: int) -> np.ndarray:
    """Latents as contiguous float32 (N, latent_dim), finite; anything else is refused."""
    array = as_array("latents", z)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != latent_dim:
        raise InvalidArgumentError(
            f"latents must be numbers of shape (N, {latent_dim}), got {array.dtype} {array.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        z32 = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(z32).all():
        raise InvalidArgumentError("latents contain NaN or values beyond float32's range")
    return z32


def _images(images: Any) -> np.ndarray:
    """uint8 images (0-255) or float images in [0, 1], of shape (N, 28, 28), (N, 1, 28, 28) or
    (28, 28) -> contiguous float32 (N, 1, 28, 28) in [0, 1]; anything else is refused."""
    array = as_array("images", images)
    if array.ndim == 2:
        array = array[None]
    ok_shape = array.ndim in (3, 4) and array.shape[-2:] == IMAGE_SHAPE[1:]
    if not ok_shape or (array.ndim == 4 and array.shape[1] != 1):
        raise InvalidArgumentError(
            f"images must have shape (N, 28, 28) or (N, 1, 28, 28), got {array.shape}"
        )
    if array.dtype == np.uint8:  # one pass: float32 division, as astype(float32) / 255
        x = np.divide(array, np.float32(255.0), dtype=np.float32)
    elif array.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            x = np.asarray(array, dtype=np.float32)  # float32 already: no copy
        # Two passes, not four: NaN propagates into min and max, and an infinity is one of them.
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InvalidArgumentError("images contain NaN or infinite pixels")
        if lo < 0.0 or hi > 1.0:
            raise InvalidArgumentError(
                f"float image pixels must be in [0, 1], got {lo:g}..{hi:g} (for 0-255 "
                "pixels pass a uint8 array, or divide by 255)"
            )
    else:
        raise InvalidArgumentError(
            f"images must be uint8 (0-255) or float (0-1) arrays, got {array.dtype}"
        )
    return np.ascontiguousarray(x.reshape(x.shape[0], *IMAGE_SHAPE))


class Decoder(_Graph):
    """A decoder graph: latents float32 (N, latent_dim) -> images float32 (N, 1, 28, 28) in [0, 1].

    >>> decoder = Decoder.load("decoder.onnx")
    >>> images = decoder.sample(25, seed=0)       # (25, 1, 28, 28)
    """

    interface = DECODER
    role = DECODER.role
    view_outputs = ((DECODER_OUTPUT,), (DECODER_LOGITS,))  # decode; decode_logits (the Scorer)

    def decode(self, z: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Decode latents (N, latent_dim) -> float32 images (N, 1, 28, 28), `batch_size` rows
        per run. Raises NumericalError if the graph emits NaN or inf."""
        check_batch_size(batch_size)
        z = _latents(z, self.latent_dim)
        check_in_memory(z.shape[0], 4 * 28 * 28, "images")
        if z.shape[0] <= batch_size:
            return self._decode_batch(z)
        out = np.empty((z.shape[0], *IMAGE_SHAPE), dtype=np.float32)
        for start in range(0, z.shape[0], batch_size):
            out[start : start + batch_size] = self._decode_batch(z[start : start + batch_size])
        return out

    def iter_decode(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Decode a stream of latent batches, one image batch (B, 1, 28, 28) per latent batch."""
        try:
            stream = iter(batches)
        except TypeError:
            raise InvalidArgumentError(
                f"batches must be an iterable of latent arrays, got {type(batches).__name__}"
            ) from None
        for z in stream:
            yield self._decode_batch(_latents(z, self.latent_dim))

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """Decode `n` latents drawn from N(0, temperature^2 I) with `seed` (as `sample_latents`):
        float32 (n, 1, 28, 28)."""
        check_in_memory(check_int("count", n, 0), 4 * 28 * 28, "images")
        batches = list(self.iter_samples(n, seed, temperature))
        return np.concatenate(batches) if batches else np.empty((0, *IMAGE_SHAPE), np.float32)

    def iter_samples(
        self,
        n: int,
        seed: int = 0,
        temperature: float = 1.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Iterator[np.ndarray]:
        """`sample(n, ...)` as a stream of (B, 1, 28, 28) batches, memory flat in `n`."""
        return self.iter_decode(iter_latents(n, self.latent_dim, seed, temperature, batch_size))

    @property
    def has_logits(self) -> bool:
        """Whether the graph has the optional `logits` output (scoring needs it; graphs
        exported before it existed decode images only)."""
        return any(t.name == DECODER_LOGITS for t in self.outputs)

    def decode_logits(self, z: Any, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Latents (N, latent_dim) -> float32 pre-sigmoid logits (N, 1, 28, 28) (images are
        their sigmoid), `batch_size` rows per run. ModelFileError for a graph without them."""
        check_batch_size(batch_size)
        self.require_logits()
        z = _latents(z, self.latent_dim)
        check_in_memory(z.shape[0], 4 * 28 * 28, "logits")
        out = np.empty((z.shape[0], *IMAGE_SHAPE), dtype=np.float32)
        for start in range(0, z.shape[0], batch_size):
            out[start : start + batch_size] = self._logits_batch(z[start : start + batch_size])
        return out

    def require_logits(self, what: str = "score images") -> None:
        """ModelFileError, in one line, unless the graph has the logits output."""
        if not self.has_logits:
            raise ModelFileError(
                f"{self.path}: has no {DECODER_LOGITS} output (exported before it existed), "
                f"which is needed to {what}; re-export it with this mnist-vae to score"
            )

    def _logits_batch(self, z: np.ndarray) -> np.ndarray:
        """Logits (B, 1, 28, 28) of checked float32 latents z (B, latent_dim), in one run."""
        (logits,) = self._run({DECODER_INPUT: z}, (DECODER_LOGITS,))
        return self._finite(logits, DECODER_LOGITS, z)

    def _decode_batch(self, z: np.ndarray) -> np.ndarray:
        (images,) = self._run({DECODER_INPUT: z}, (DECODER_OUTPUT,))
        # One integer pass proves every pixel is in [+0.0, 1.0]: as uint32 the bits of +0.0..1.0
        # are 0..0x3F800000 in order, and a NaN, an infinity, 1.0000001 or any negative value
        # (sign bit set) read larger. That is every image of a healthy graph.
        if images.size == 0 or images.view(np.uint32).max() <= _ONE_BITS:
            return images
        images = self._finite(images, DECODER_OUTPUT, z)
        # onnxruntime's Sigmoid is an approximation that can return 1.0000001: the contract
        # says [0, 1], and the encoder takes decoded images back, so clip (in place).
        return np.clip(images, 0.0, 1.0, out=images)


class Encoder(_Graph):
    """An encoder graph: images (N, 1, 28, 28) in [0, 1] -> mu, logvar, each (N, latent_dim)."""

    interface = ENCODER
    role = ENCODER.role

    def encode(
        self, images: Any, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (mu, logvar), each float32 (N, latent_dim). `images`: uint8 (N, 28, 28)
        (0-255, as IDX files and PNGs hold them) or float (N, 1, 28, 28) / (N, 28, 28) in [0, 1]."""
        check_batch_size(batch_size)
        x = _images(images)
        mus, logvars = [], []
        for start in range(0, max(x.shape[0], 1), batch_size):
            batch = x[start : start + batch_size]
            mu, logvar = self._run({ENCODER_INPUT: batch})
            mus.append(self._finite(mu, ENCODER_OUTPUTS[0], batch))
            logvars.append(self._finite(logvar, ENCODER_OUTPUTS[1], batch))
        return np.concatenate(mus), np.concatenate(logvars)


def reconstruct(encoder: Encoder, decoder: Decoder, images: Any) -> np.ndarray:
    """Encode `images` and decode their means (no sampling, so it is deterministic):
    float32 (N, 1, 28, 28). Raises ModelFileError if the two graphs' latent sizes differ."""
    check_pair(encoder, decoder)
    mu, _ = encoder.encode(images)
    return decoder.decode(mu)


def check_pair(encoder: Encoder, decoder: Decoder) -> None:
    """Raise ModelFileError unless `encoder` and `decoder` share a latent size."""
    if encoder.latent_dim != decoder.latent_dim:
        raise ModelFileError(
            f"{encoder.path} has latent size {encoder.latent_dim} but {decoder.path} has "
            f"{decoder.latent_dim}; use an encoder and a decoder exported from the same model.pt"
        )
