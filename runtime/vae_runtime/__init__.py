"""mnist-vae's torch-free runtime: load exported ONNX graphs, sample, decode, tile, write images."""

from .errors import (
    DataError,
    InvalidArgumentError,
    ModelFileError,
    NumericalError,
    OutputError,
    VaeError,
)
from .sampling import interpolate, iter_latents, sample_latents

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "InvalidArgumentError",
    "ModelFileError",
    "NumericalError",
    "OutputError",
    "VaeError",
    "__version__",
    "interpolate",
    "iter_latents",
    "sample_latents",
]
