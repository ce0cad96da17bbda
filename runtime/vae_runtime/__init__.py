"""mnist-vae's torch-free runtime: load exported ONNX graphs, sample, decode, tile, write images.

from vae_runtime import Decoder, tile, save_png
decoder = Decoder.load("decoder.onnx")        # checks role, names, shapes, manifest SHA-256
images = decoder.sample(25, seed=0)           # float32 (25, 1, 28, 28) in [0, 1]
save_png(tile(images, rows=5, cols=5), "samples.png")
"""

from .errors import (
    DataError,
    InvalidArgumentError,
    ModelFileError,
    NumericalError,
    OutputError,
    VaeError,
)
from .images import NpyWriter, save_gif, save_png, tile, to_uint8
from .inputs import load_inputs, read_image
from .sampling import interpolate, iter_latents, manifold_latents, sample_latents
from .session import Decoder, Encoder, reconstruct

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "Decoder",
    "Encoder",
    "InvalidArgumentError",
    "ModelFileError",
    "NpyWriter",
    "NumericalError",
    "OutputError",
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
