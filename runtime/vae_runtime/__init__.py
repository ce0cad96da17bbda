"""mnist-vae's torch-free runtime: load exported ONNX graphs, sample, decode, tile, write images.

from vae_runtime import Decoder, tile, save_png
decoder = Decoder.load("decoder.onnx")        # checks role, names, shapes, manifest SHA-256
images = decoder.sample(25, seed=0)           # float32 (25, 1, 28, 28) in [0, 1]
save_png(tile(images, rows=5, cols=5), "samples.png")

The names load on first use (PEP 562): the console scripts install their signal handlers before
numpy and onnxruntime are imported (half of a command's start-up), so that a Ctrl-C at any moment
is one line and an exit code, never a traceback from the middle of an import.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

__version__ = "0.1.0"

_EXPORTS = {
    "BusyError": "errors",
    "DataError": "errors",
    "InvalidArgumentError": "errors",
    "ModelFileError": "errors",
    "NumericalError": "errors",
    "OutputError": "errors",
    "OutputRefusedError": "errors",
    "VaeError": "errors",
    "Manifest": "contract",
    "ScoreReference": "contract",
    "NpyWriter": "npy",
    "Outputs": "fileio",
    "save_gif": "images",
    "save_png": "images",
    "tile": "images",
    "to_uint8": "images",
    "load_inputs": "inputs",
    "read_image": "inputs",
    "interpolate": "sampling",
    "iter_latents": "sampling",
    "manifold_latents": "sampling",
    "sample_latents": "sampling",
    "Decoder": "session",
    "Encoder": "session",
    "reconstruct": "session",
    "Scorer": "scoring",
    "Scores": "scoring",
}

__all__ = [
    "BusyError",
    "DataError",
    "Decoder",
    "Encoder",
    "InvalidArgumentError",
    "Manifest",
    "ModelFileError",
    "NpyWriter",
    "NumericalError",
    "OutputError",
    "OutputRefusedError",
    "Outputs",
    "ScoreReference",
    "Scorer",
    "Scores",
    "VaeError",
    "__version__",
    "interpolate",
    "iter_latents",
    "load_inputs",
    "manifold_latents",
    "read_image",
    "reconstruct",
    "sample_latents",
    "save_gif",
    "save_png",
    "tile",
    "to_uint8",
]

if TYPE_CHECKING:
    from .contract import Manifest, ScoreReference
    from .errors import (
        BusyError,
        DataError,
        InvalidArgumentError,
        ModelFileError,
        NumericalError,
        OutputError,
        OutputRefusedError,
        VaeError,
    )
    from .fileio import Outputs
    from .images import save_gif, save_png, tile, to_uint8
    from .inputs import load_inputs, read_image
    from .npy import NpyWriter
    from .sampling import interpolate, iter_latents, manifold_latents, sample_latents
    from .scoring import Scorer, Scores
    from .session import Decoder, Encoder, reconstruct


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
