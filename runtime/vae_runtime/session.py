"""ONNX Runtime sessions for the exported graphs: load, check against the contract, run.

`Decoder.load(path)` and `Encoder.load(path)` read the file once, check its SHA-256 against a
`manifest.json` beside it (when there is one listing the file), build the session from the bytes
read, and check the graph's metadata role, input/output names, dtypes and shapes against
`contract.py`. Whatever is wrong comes back as a ModelFileError saying what was expected and
what was found, never as an onnxruntime stack trace.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .contract import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUTS,
    IMAGE_SHAPE,
    MANIFEST_FILE,
    MANIFEST_FILES,
    MANIFEST_SHA256,
    GraphInfo,
    parse_metadata,
)
from .errors import InvalidArgumentError, ModelFileError, NumericalError
from .sampling import iter_latents

if TYPE_CHECKING:  # typing.Self is 3.11+; annotations are never evaluated at run time
    from typing_extensions import Self

DEFAULT_PROVIDER = "CPUExecutionProvider"
_Args = tuple[tuple[str, tuple[int, ...]], ...]  # (name, dims after the batch axis) per argument
DEFAULT_BATCH_SIZE = 1024  # rows per run: large enough to keep the matmuls efficient, ~3 MB out
_FLOAT = "tensor(float)"


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The options every mnist-vae session runs with (the exporter verifies under them too):
    all graph optimisations, sequential, `threads` intra-op threads (default: one per core)."""
    if threads is not None and threads < 1:
        raise InvalidArgumentError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Two matmuls in a chain: nothing runs in parallel across nodes, so one inter-op thread and
    # sequential execution; the parallelism is inside each matmul, one thread per core.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or cpu_count()
    options.log_severity_level = 3  # errors only: warnings would break the one-line contract
    return options


def _check_providers(providers: Sequence[str] | None) -> list[str]:
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


def _read_checked(path: Path) -> bytes:
    """The file's bytes, after checking its SHA-256 against a manifest.json beside it."""
    if not path.exists():
        raise ModelFileError(f"{path}: no such file; export one with `vae-export model.pt`")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, expected an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read: {exc.strerror}") from None
    manifest = path.parent / MANIFEST_FILE
    if manifest.is_file():
        expected = _manifest_sha256(manifest, path.name)
        if expected is not None:
            found = hashlib.sha256(data).hexdigest()
            if found != expected.lower():
                raise ModelFileError(
                    f"{path}: SHA-256 {found[:16]}... does not match {expected[:16]}... listed in "
                    f"{manifest}; the file was modified or comes from another export "
                    "(re-export, or move the graph away from that manifest)"
                )
    return data


def _manifest_sha256(manifest: Path, name: str) -> str | None:
    """The SHA-256 `manifest` lists for file `name`, or None when it does not list the file."""
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"{manifest}: unreadable manifest beside the graph ({exc})") from None
    files = content.get(MANIFEST_FILES) if isinstance(content, dict) else None
    entry = files.get(name) if isinstance(files, dict) else None
    if not isinstance(entry, dict) or MANIFEST_SHA256 not in entry:
        return None
    return str(entry[MANIFEST_SHA256])


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


def _check_finite(array: np.ndarray, path: Path, name: str) -> None:
    # One float sum is much cheaper than isfinite() over the array and is NaN/inf whenever any
    # element is; an overflowing sum of finite values is re-checked element-wise.
    if not math.isfinite(array.sum()) and not np.isfinite(array).all():
        raise NumericalError(
            f"{path}: output {name!r} contains NaN or infinite values; the graph is broken "
            "(re-export it from a healthy model.pt)"
        )


class _Graph:
    """What encoder and decoder share: the checked session, its path and metadata."""

    role = ""

    def __init__(self, session: ort.InferenceSession, path: Path, info: GraphInfo) -> None:
        self._session = session
        self.path = path
        self.info = info

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector, as the graph's metadata and shapes state it."""
        return self.info.latent_dim

    @staticmethod
    def _io(latent_dim: int) -> tuple[_Args, _Args]:
        """The (name, dims after the batch axis) of each input and output the contract asks for."""
        raise NotImplementedError

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> Self:
        """Load `path` and check it against the contract. `providers`: onnxruntime execution
        providers (default CPU); `threads`: intra-op threads (default: one per available core).
        Raises ModelFileError for a wrong, foreign, corrupt or modified file."""
        session, path, info = cls._open(path, providers, threads)
        want_in, want_out = cls._io(info.latent_dim)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != len(want_in) or len(outputs) != len(want_out):
            raise ModelFileError(
                f"{path}: inputs {[a.name for a in inputs]} and outputs "
                f"{[a.name for a in outputs]}, expected {[n for n, _ in want_in]} and "
                f"{[n for n, _ in want_out]}"
            )
        for kind, args, wanted in (("input", inputs, want_in), ("output", outputs, want_out)):
            for arg, (name, dims) in zip(args, wanted, strict=True):
                _check_arg(path, kind, arg, name, dims)
        return cls(session, path, info)

    @classmethod
    def _open(
        cls, path: Path | str, providers: Sequence[str] | None, threads: int | None
    ) -> tuple[ort.InferenceSession, Path, GraphInfo]:
        path = Path(path)
        options = session_options(threads)
        chosen = _check_providers(providers)
        data = _read_checked(path)
        try:
            session = ort.InferenceSession(data, options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidProtobuf, ...)
            detail = " ".join(str(exc).split())[:200]
            raise ModelFileError(
                f"{path}: not a loadable ONNX graph, expected an mnist-vae {cls.role} "
                f"({type(exc).__name__}: {detail})"
            ) from None
        info = parse_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        if info.role != cls.role:
            a = {"encoder": "an", "decoder": "a"}
            raise ModelFileError(
                f"{path}: is an mnist-vae {info.role} graph, expected {a[cls.role]} {cls.role} "
                f"(pass {info.role}.onnx where {a[info.role]} {info.role} is asked for)"
            )
        return session, path, info

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._session.run(None, feed)
        except Exception as exc:  # a graph that loads but cannot run on this input
            detail = " ".join(str(exc).split())[:200]
            raise ModelFileError(f"{self.path}: running the graph failed: {detail}") from None


class Decoder(_Graph):
    """A decoder graph: latents float32 (N, latent_dim) -> images float32 (N, 1, 28, 28) in [0, 1].

    >>> decoder = Decoder.load("decoder.onnx")
    >>> images = decoder.sample(25, seed=0)       # (25, 1, 28, 28)
    """

    role = "decoder"

    @staticmethod
    def _io(latent_dim: int) -> tuple[_Args, _Args]:
        return ((DECODER_INPUT, (latent_dim,)),), ((DECODER_OUTPUT, IMAGE_SHAPE),)

    def decode(self, z: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Decode latents (N, latent_dim) -> float32 images (N, 1, 28, 28), `batch_size` rows
        per run. Raises NumericalError if the graph emits NaN or inf."""
        z = self._check_latents(z)
        if z.shape[0] <= batch_size:
            return self._decode_batch(z)
        out = np.empty((z.shape[0], *IMAGE_SHAPE), dtype=np.float32)
        for start in range(0, z.shape[0], batch_size):
            out[start : start + batch_size] = self._decode_batch(z[start : start + batch_size])
        return out

    def iter_decode(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Decode a stream of latent batches, one image batch (B, 1, 28, 28) per latent batch."""
        for z in batches:
            yield self._decode_batch(self._check_latents(z))

    def sample(self, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
        """Decode `n` latents drawn from N(0, temperature^2 I) with `seed` (as `sample_latents`):
        float32 (n, 1, 28, 28)."""
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

    def _check_latents(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise InvalidArgumentError(
                f"latents must have shape (N, {self.latent_dim}) for {self.path}, got {z.shape}"
            )
        return np.ascontiguousarray(z)

    def _decode_batch(self, z: np.ndarray) -> np.ndarray:
        (images,) = self._run({DECODER_INPUT: z})
        _check_finite(images, self.path, DECODER_OUTPUT)
        return images


class Encoder(_Graph):
    """An encoder graph: images (N, 1, 28, 28) in [0, 1] -> mu, logvar, each (N, latent_dim)."""

    role = "encoder"

    @staticmethod
    def _io(latent_dim: int) -> tuple[_Args, _Args]:
        return ((ENCODER_INPUT, IMAGE_SHAPE),), tuple((n, (latent_dim,)) for n in ENCODER_OUTPUTS)

    def encode(
        self, images: np.ndarray, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (mu, logvar), each float32 (N, latent_dim). `images`: uint8 (N, 28, 28)
        (0-255, as IDX files and PNGs hold them) or float (N, 1, 28, 28) / (N, 28, 28) in [0, 1]."""
        x = _as_float_images(images)
        mus, logvars = [], []
        for start in range(0, max(x.shape[0], 1), batch_size):
            mu, logvar = self._run({ENCODER_INPUT: x[start : start + batch_size]})
            _check_finite(mu, self.path, ENCODER_OUTPUTS[0])
            _check_finite(logvar, self.path, ENCODER_OUTPUTS[1])
            mus.append(mu)
            logvars.append(logvar)
        return np.concatenate(mus), np.concatenate(logvars)


def _as_float_images(images: np.ndarray) -> np.ndarray:
    """uint8 or float images of 28x28 -> contiguous float32 (N, 1, 28, 28) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.shape[-2:] != IMAGE_SHAPE[1:] or images.ndim not in (3, 4):
        raise InvalidArgumentError(
            f"images must have shape (N, 28, 28) or (N, 1, 28, 28), got {images.shape}"
        )
    if images.dtype == np.uint8:
        x = images.astype(np.float32) / np.float32(255.0)
    else:
        x = images.astype(np.float32, copy=False)
    return np.ascontiguousarray(x.reshape(x.shape[0], *IMAGE_SHAPE))


def reconstruct(encoder: Encoder, decoder: Decoder, images: np.ndarray) -> np.ndarray:
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
