"""int8 and fp16 graphs made from the verified fp32 ones, and the quality gate they must pass.

int8 is onnxruntime's dynamic quantization: 8-bit weights per output channel, activations quantized
per batch at run time (MatMulInteger). The weights are unsigned (u8 x u8): with signed weights (u8
x s8), onnxruntime's x86 kernels on CPUs without VNNI (AVX2, AVX-512 without VNNI) add pairs of
products in saturating 16-bit integers (vpmaddubsw), and a pixel of 255 times a weight near 127
overflows them. On an AVX2-only EPYC the encoder's mu then moved by up to 0.33 and the test BCE by
0.42 nats; the same recipe on a VNNI CPU had measured 0.011. The gate runs on the export machine,
the graph on whatever machine deploys it, and u8 x u8 does not saturate on any x86 CPU. Where
u8 x s8 is exact and about twice as fast (x86 with VNNI), vae_runtime makes the weights signed
as it loads them (vae_runtime.rewrite): the same integer products, the same output bits. The one
or two small layers next to the latent (the decoder's first, the encoder's mu and logvar heads)
stay float32: they hold under 2% of the weights but, quantized, most of the error, because 20
latent values of wide range share one 8-bit scale. Static QDQ (percentile or entropy calibration on
test images and prior samples) was measured against it and lost on quality at no gain in speed:
`bench/generate_speed.py --methods`.

fp16 is onnxruntime's float16 converter with float32 kept at the inputs and outputs: on x86 CPUs
it is a file-size option only (onnxruntime casts back to float32 to compute).

Every lower-precision graph is measured against the fp32 graph (not torch), on the files as
staged, before anything is renamed into place; one over its limit stops the export.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from vae_runtime import contract as C
from vae_runtime.errors import InvalidArgumentError, NumericalError
from vae_runtime.images import to_uint8
from vae_runtime.sampling import sample_latents
from vae_runtime.session import Decoder, Encoder

from .graphs import ExportError

PRIOR_SAMPLES = 10_000  # decoder pixels compared over this many N(0, I) latents (seed 0)
GATE_IMAGES = 10_000  # MNIST's test set: encoder and reconstructions compared over these
GRID_SAMPLES = 25  # vae-generate's default 5x5 grid: the first 25 of seed 0, temperature 1
# The gate, per precision: the largest figure allowed. Pixels are in [0, 1]; BCE in nats/image.
LIMITS: dict[str, dict[str, float]] = {
    "int8": {"pixel_max_abs": 0.035, "pixel_mean_abs": 0.002, "bce_delta": 0.2},
    "fp16": {"pixel_max_abs": 0.002},
}
INT8_METHOD = (
    "onnxruntime.quantization.quantize_dynamic: uint8 weights per output channel (u8 x u8: "
    "no 16-bit saturation on x86 CPUs without VNNI; vae_runtime makes them int8 as it loads "
    "them on VNNI CPUs, exactly), activations quantized per batch; the layers next to the "
    "latent kept float32"
)
_LIMIT_WORDS = {
    "pixel_max_abs": "max abs pixel error",
    "pixel_mean_abs": "mean abs pixel error",
    "bce_delta": "test BCE difference (nats/image)",
}


class QualityError(NumericalError):
    """A lower-precision graph differs from the fp32 graph by more than its limit."""


def parse_graph_precisions(text: str) -> tuple[str, ...]:
    """The graphs' number formats asked for (vae-export --precision): 'fp32,int8' ->
    ('fp32', 'int8'), in contract.PRECISIONS order; unknown or empty is an error. (Not the
    training arithmetic, vae_train.device.COMPUTE_DTYPES.)"""
    asked = [p.strip() for p in text.split(",")]
    unknown = [p for p in asked if p not in C.PRECISIONS]
    if unknown or not text.strip():
        raise InvalidArgumentError(
            f"--precision {text!r}: expected a comma-separated subset of {','.join(C.PRECISIONS)}"
        )
    return tuple(p for p in C.PRECISIONS if p in asked)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("run pre-processing") at WARNING: not for users."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _latent_layers(model: onnx.ModelProto, role: str) -> list[str]:
    """The Gemm nodes that read the latent (decoder) or write it (encoder): those touching an
    input or output the role's interface declares latent-sized."""
    interface = C.INTERFACES[role]
    latent = {t.name for t in (*interface.inputs, *interface.outputs) if C.LATENT in t.dims}
    return [
        n.name for n in model.graph.node if n.op_type == "Gemm" and latent & {*n.input, *n.output}
    ]


def lower(fp32: bytes, role: str, precision: str) -> bytes:
    """The `precision` graph made from the serialized fp32 `role` graph, with the same inputs,
    outputs and metadata but `vae.precision`. Raises ExportError if the tools misbehave."""
    model = onnx.load_from_string(fp32)
    if precision == "int8":
        lowered = _int8(model, role)
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        lowered = convert_float_to_float16(model, keep_io_types=True)
        OnnxModel(lowered).topological_sort()  # the converter appends its input casts last
    else:
        raise InvalidArgumentError(f"no lower precision {precision!r}")
    props = {p.key: p.value for p in model.metadata_props} | {C.META_PRECISION: precision}
    del lowered.metadata_props[:]
    onnx.helper.set_model_props(lowered, props)
    try:
        onnx.checker.check_model(lowered, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the {precision} {role} graph fails onnx.checker: {exc}") from None
    data: bytes = lowered.SerializeToString()
    return data


def _int8(model: onnx.ModelProto, role: str) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = _latent_layers(model, role)
    # The quantizer splits each Gemm into "<name>_MatMul" + "<name>_Add" before quantizing.
    exclude = [*kept, *(f"{name}_MatMul" for name in kept)]
    gemms = sum(n.op_type == "Gemm" for n in model.graph.node)
    with tempfile.TemporaryDirectory(prefix="vae-int8-") as tmp, _quiet_quantizer():
        out = Path(tmp) / "int8.onnx"  # the quantizer writes only to a path
        quantize_dynamic(
            model,
            out,
            weight_type=QuantType.QUInt8,  # u8 x u8: exact on every x86 CPU (module doc)
            per_channel=True,
            nodes_to_exclude=exclude,
        )
        lowered = onnx.load(out)
    quantized = sum(n.op_type == "MatMulInteger" for n in lowered.graph.node)
    if quantized != gemms - len(kept):
        raise ExportError(
            f"the int8 {role}: onnxruntime's quantizer made {quantized} integer layers, "
            f"expected {gemms - len(kept)} (all but {', '.join(kept)})"
        )
    return lowered


@dataclass(frozen=True)
class Quality:
    """One lower-precision pair against the fp32 pair: figures by name, and the gate."""

    precision: str
    figures: dict[str, float]
    images: str  # what the encoder and reconstructions were measured on

    @property
    def failures(self) -> list[str]:
        """One phrase per figure over its limit: the figure and the limit."""
        return [
            f"{_LIMIT_WORDS[key]} {self.figures[key]:.4g} > limit {limit:g}"
            for key, limit in LIMITS[self.precision].items()
            if not abs(self.figures[key]) <= limit  # NaN fails too
        ]

    def for_role(self, role: str) -> dict[str, float | str]:
        """The figures manifest.json records beside the `role` graph."""
        prefix = f"{role}_"  # the figures of one graph are named after its role
        mine: dict[str, float | str] = {
            k.removeprefix(prefix): v for k, v in self.figures.items() if k.startswith(prefix)
        }
        shared = ("pixel_max_abs", "pixel_mean_abs", "bce_fp32", "bce", "bce_delta")
        mine.update({k: self.figures[k] for k in shared})
        mine["images"] = self.images
        mine["limits"] = ", ".join(f"{k} <= {v:g}" for k, v in LIMITS[self.precision].items())
        return mine

    def summary(self) -> str:
        f = self.figures
        return (
            f"{self.precision}: pixels max {f['pixel_max_abs']:.4f} mean "
            f"{f['pixel_mean_abs']:.5f}, 5x5 grid max {f['decoder_grid_max_grey']:.0f}/255, "
            f"mu max {f['encoder_mu_max_abs']:.4f}, test BCE {f['bce']:.2f} vs "
            f"{f['bce_fp32']:.2f} fp32 ({f['bce_delta']:+.3f})"
        )


def _abs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()), float(d.mean())


def _bce(images: np.ndarray, recon: np.ndarray) -> float:
    """Mean over images of the summed per-pixel binary cross-entropy, in nats (float64)."""
    x = images.reshape(len(images), -1).astype(np.float64)
    p = np.clip(recon.reshape(len(recon), -1).astype(np.float64), 1e-12, 1 - 1e-12)
    return float(-(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1).mean())


def measure(
    precision: str,
    reference: tuple[Encoder, Decoder],
    lowered: tuple[Encoder, Decoder],
    images: np.ndarray,
    images_name: str,
) -> Quality:
    """The figures of the `lowered` (encoder, decoder) against the fp32 `reference`: decoder
    pixels over PRIOR_SAMPLES prior latents and over the reconstructions of `images` (float32
    (N, 1, 28, 28)), the default grid in grey levels, encoder mu/logvar on `images`, and the
    reconstruction BCE of `images` through each pair."""
    (encoder, decoder), (low_encoder, low_decoder) = reference, lowered
    z = sample_latents(PRIOR_SAMPLES, decoder.latent_dim, seed=0)  # (N, d)
    prior, low_prior = decoder.decode(z), low_decoder.decode(z)  # (N, 1, 28, 28)
    mu, logvar = encoder.encode(images)
    low_mu, low_logvar = low_encoder.encode(images)
    recon = decoder.decode(mu)
    figures: dict[str, float] = {}
    figures["decoder_prior_max_abs"], figures["decoder_prior_mean_abs"] = _abs(prior, low_prior)
    low_recon_same_z = low_decoder.decode(mu)
    figures["decoder_recon_max_abs"], figures["decoder_recon_mean_abs"] = _abs(
        recon, low_recon_same_z
    )
    # The grid exactly as vae-generate decodes it: int8 activations are scaled per batch.
    z_grid = sample_latents(GRID_SAMPLES, decoder.latent_dim, seed=0)
    grid = to_uint8(decoder.decode(z_grid)).astype(np.int16)
    figures["decoder_grid_max_grey"] = float(
        np.abs(grid - to_uint8(low_decoder.decode(z_grid))).max()
    )
    figures["encoder_mu_max_abs"], figures["encoder_mu_mean_abs"] = _abs(mu, low_mu)
    figures["encoder_logvar_max_abs"], figures["encoder_logvar_mean_abs"] = _abs(logvar, low_logvar)
    figures["pixel_max_abs"] = max(
        figures["decoder_prior_max_abs"], figures["decoder_recon_max_abs"]
    )
    figures["pixel_mean_abs"] = max(
        figures["decoder_prior_mean_abs"], figures["decoder_recon_mean_abs"]
    )
    figures["bce_fp32"] = _bce(images, recon)
    figures["bce"] = _bce(images, low_decoder.decode(low_mu))  # the lower-precision pair
    figures["bce_delta"] = figures["bce"] - figures["bce_fp32"]
    rounded = {k: float(f"{v:.6g}") for k, v in figures.items()}
    return Quality(precision, rounded, f"{images_name} ({len(images):,})")


def gate(qualities: Sequence[Quality], out: Path) -> None:
    """Raise QualityError naming every graph pair over a limit, with the figure and the limit."""
    failed = [f"{q.precision} graphs: {'; '.join(q.failures)}" for q in qualities if q.failures]
    if failed:
        raise QualityError(
            f"{' / '.join(failed)} (against the fp32 graphs); nothing written to {out}"
        )
