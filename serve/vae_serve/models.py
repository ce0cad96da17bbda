"""What the service serves: the export's graphs as Open Inference Protocol models.

Every graph the export folder's manifest lists becomes a model named by the contract's
`served_name` (the chosen precision's pair as `decoder` and `encoder`, the others as
`decoder_int8`, `encoder_fp16`, ...), its tensors described by the contract's declarations; and
`sampler` (seed, count, temperature in; the images `vae-generate` draws out); and, where the
pair has an encoder and a decoder with logits, `scorer` (images, seed and k in; each image's ELBO,
IWAE bound and percentile against the manifest's score reference out, as `vae-score` computes
them). Each model runs through the runtime's `Decoder`/`Encoder`/`Scorer`, so the service checks
and computes exactly what the commands do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vae_runtime import triton_config
from vae_runtime.contract import (
    DECODER_OUTPUT,
    IMAGE_SHAPE,
    MANIFEST_FILE,
    Manifest,
    graph_file,
    listed_graphs,
    served_name,
)
from vae_runtime.errors import InvalidArgumentError, ModelFileError, check_int
from vae_runtime.sampling import MAX_SEED, check_sampling
from vae_runtime.scoring import DEFAULT_K, MAX_K, Scorer
from vae_runtime.session import Decoder, Encoder, check_pair

from .codec import VERSION, TensorSpec

if TYPE_CHECKING:
    from .app import ServeConfig

SAMPLER = "sampler"
SCORER = "scorer"
SCORES = ("elbo", "iwae", "percentile")


@dataclass(frozen=True)
class Model:
    """One served model: its tensors, metadata, the function that runs it, and how many rows
    a request asks of it (`rows`; default: the first input's batch axis)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, Any]
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    platform: str = "onnxruntime_onnx"
    rows: Callable[[dict[str, np.ndarray]], int] | None = None
    # Triton's model configuration (JSON form): a graph's is config.pbtxt's (triton_config)
    config: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata response."""
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": self.platform,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class Models:
    """The loaded models by served name; `grid` is the decoder behind `sampler` and
    /samples.png."""

    models: dict[str, Model]
    grid: Decoder
    export: dict[str, str] = field(default_factory=dict)  # the manifest's sha256 (export_id)


def _parameters(graph: Decoder | Encoder) -> dict[str, Any]:
    info, entry = graph.info, graph.entry
    params: dict[str, Any] = {
        "role": info.role,
        "latent_dim": info.latent_dim,
        "precision": graph.precision,
        "file": graph.path.name,
        "producer_version": info.producer_version,
        "source": info.source,
        "training": info.training,
    }
    if entry is not None:
        params["sha256"] = entry.sha256
        if entry.quality:
            params["quality"] = entry.quality
    return params


def code_config(model: Model) -> dict[str, Any]:
    """The configuration of a model that is code around the graphs (sampler, scorer): no batch
    axis of Triton's (max_batch_size 0: its dims are whole shapes, -1 for any size), backend
    "python" (what it would be under Triton), its platform as its metadata says."""

    def tensor(spec: TensorSpec, optional: bool = False) -> dict[str, Any]:
        kind = triton_config.PROTOCOL_TYPES[spec.datatype]
        return triton_config.tensor(spec.name, kind, spec.shape, optional and spec.optional)

    params = {
        k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        for k, v in model.parameters.items()
    }
    return triton_config.config(
        model.name,
        (tensor(s, optional=True) for s in model.inputs),
        (tensor(s) for s in model.outputs),
        max_batch_size=0,
        platform=model.platform,
        backend="python",
        params=params,
    )


def graph_model(name: str, graph: Decoder | Encoder, max_batch: int = 1024) -> Model:
    """A graph as a model: the contract's declared inputs and outputs, batch axis -1."""
    interface, latent = graph.interface, graph.latent_dim
    # The required outputs: a decoder's optional logits feed the scorer model, not clients (a
    # second graph run on every decode otherwise).
    declared = [t for t in interface.outputs if not t.optional]
    inputs = tuple(TensorSpec(t.name, "FP32", (-1, *t.shape(latent))) for t in interface.inputs)
    outputs = tuple(TensorSpec(t.name, "FP32", (-1, *t.shape(latent))) for t in declared)
    names = [t.name for t in declared]

    if isinstance(graph, Decoder):

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {names[0]: graph.decode(feed[inputs[0].name])}

    else:

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, graph.encode(feed[inputs[0].name]), strict=True))

    config = triton_config.graph_config(
        graph.info.role,
        graph.precision,
        latent,
        graph.sha256,
        graph.metadata,
        output_names=[t.name for t in graph.outputs],
        max_batch_size=max_batch,
    )
    config["name"] = name  # the served name (--precision may give another the plain name)
    return Model(name, inputs, outputs, _parameters(graph), run, config=config)


def sampler_model(decoder: Decoder, max_batch: int) -> Model:
    """`sampler`: seed, count and temperature in, `count` images drawn as vae-generate draws."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seed, count = int(inputs["seed"][0]), int(inputs["count"][0])
        temperature = float(inputs["temperature"][0]) if "temperature" in inputs else 1.0
        check_sampling(count, seed, temperature)
        check_int("count", count, 1, max_batch)
        return {DECODER_OUTPUT: decoder.sample(count, seed, temperature)}

    params = {**_parameters(decoder), "draws": "numpy default_rng(seed), as vae-generate"}
    return Model(
        SAMPLER,
        (
            TensorSpec("seed", "INT64", (1,)),
            TensorSpec("count", "INT64", (1,)),
            TensorSpec("temperature", "FP64", (1,), optional=True),
        ),
        (TensorSpec(DECODER_OUTPUT, "FP32", (-1, *IMAGE_SHAPE)),),
        params,
        run,
        platform="mnist-vae_sampler",
        rows=lambda inputs: int(inputs["count"][0]),
    )


def scorer_model(scorer: Scorer, max_rows: int) -> Model:
    """`scorer`: images, seed and k (default DEFAULT_K) in; each image's ELBO, IWAE bound and
    percentile (NaN without a reference) out, as float32, image j drawing its noise as index j
    of vae-score. k x images above `max_rows` is refused (InvalidArgumentError: a 400)."""

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = inputs["image"]
        seed = check_int("seed", int(inputs["seed"][0]), 0, MAX_SEED)
        k = check_int("k", int(inputs["k"][0]), 1, MAX_K) if "k" in inputs else DEFAULT_K
        if k * len(images) > max_rows:
            raise InvalidArgumentError(
                f"k x batch = {k:,} x {len(images):,} is above this server's cap of "
                f"{max_rows:,} decoder rows per request (--max-score-rows)"
            )
        scores = scorer.score(images, k=k, seed=seed)
        percentile = (
            scorer.percentile(scores.iwae)
            if scorer.reference is not None
            else np.full(len(images), np.nan)
        )
        values = (scores.elbo, scores.iwae, percentile)
        return {name: v.astype(np.float32) for name, v in zip(SCORES, values, strict=True)}

    params: dict[str, Any] = {
        **_parameters(scorer.decoder),
        "default_k": DEFAULT_K,
        "max_score_rows": max_rows,
        "draws": "numpy default_rng([seed, j]) for image j of the request, as vae-score",
    }
    reference = scorer.reference
    if reference is not None:
        params.update(reference_statistic=reference.statistic, reference_k=reference.k)
        params.update(reference_seed=reference.seed, reference_count=reference.count)
    return Model(
        SCORER,
        (
            TensorSpec("image", "FP32", (-1, *IMAGE_SHAPE)),
            TensorSpec("seed", "INT64", (1,)),
            TensorSpec("k", "INT64", (1,), optional=True),
        ),
        tuple(TensorSpec(name, "FP32", (-1,)) for name in SCORES),
        params,
        run,
        platform="mnist-vae_scorer",
        rows=lambda inputs: (
            len(inputs["image"]) * int(inputs["k"][0] if "k" in inputs else DEFAULT_K)
        ),
    )


def export_manifest(onnx_dir: Path) -> Manifest:
    """The manifest of an export folder, checked (ModelFileError when there is none)."""
    path = Path(onnx_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{onnx_dir}: no {MANIFEST_FILE}; give the folder vae-export wrote, or "
            "name the graphs with --decoder/--encoder"
        )
    return Manifest.load(path)


def load_models(config: ServeConfig) -> Models:
    """Load every graph `config` names, checked as the runtime checks them (ModelFileError)."""
    config.check()
    threads, providers = config.threads, config.providers or None
    graphs: dict[str, Decoder | Encoder] = {}
    if config.onnx_dir is not None:
        manifest = export_manifest(config.onnx_dir)
        for role, precision, file in listed_graphs(manifest.files):
            kind = Decoder if role == "decoder" else Encoder
            graphs[served_name(role, precision, config.precision)] = kind.load(
                Path(config.onnx_dir) / file, threads=threads, providers=providers
            )
        if "decoder" not in graphs:
            raise ModelFileError(
                f"{manifest.path} lists no {config.precision} decoder "
                f"({graph_file('decoder', config.precision)}); choose another --precision"
            )
    else:
        assert config.decoder is not None  # check() saw to it
        graphs["decoder"] = Decoder.load(config.decoder, threads=threads, providers=providers)
        if config.encoder is not None:
            graphs["encoder"] = Encoder.load(config.encoder, threads=threads, providers=providers)
    decoder = graphs["decoder"]
    assert isinstance(decoder, Decoder)
    encoder = graphs.get("encoder")
    if isinstance(encoder, Encoder):
        check_pair(encoder, decoder)
    models = {name: graph_model(name, graph, config.max_batch) for name, graph in graphs.items()}
    models[SAMPLER] = sampler_model(decoder, config.max_batch)
    if isinstance(encoder, Encoder) and decoder.has_logits:
        beside = (
            export_manifest(config.onnx_dir) if config.onnx_dir else Manifest.beside(decoder.path)
        )
        reference = beside.score_reference if beside is not None else None
        models[SCORER] = scorer_model(Scorer(encoder, decoder, reference), config.max_score_rows)
    export = export_id(config.onnx_dir) if config.onnx_dir is not None else {}
    for name, model in models.items():  # which export each model is from, in its metadata
        model = replace(model, parameters={**model.parameters, **export})
        models[name] = model if model.config else replace(model, config=code_config(model))
    return Models(models, decoder, export)


def export_id(onnx_dir: Path) -> dict[str, str]:
    """Which export a folder holds: its manifest.json's SHA-256 (and its export time, where the
    manifest records one); {} when the manifest cannot be read."""
    try:
        data = (Path(onnx_dir) / MANIFEST_FILE).read_bytes()
    except OSError:
        return {}
    out = {"export_sha256": hashlib.sha256(data).hexdigest()}
    try:
        exported = json.loads(data).get("exported_at")
    except (ValueError, AttributeError):
        exported = None
    if isinstance(exported, str):
        out["exported_at"] = exported
    return out
