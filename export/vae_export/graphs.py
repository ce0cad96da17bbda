"""torch -> ONNX for one graph: the export wrappers, the dynamo export, clean-up, metadata, checks.

`graph_bytes(role, model, ...)` is all `onnx_export` needs: one encoder or decoder graph,
exported with a named dynamic batch axis, slimmed to what inference needs, stamped with the
contract's metadata and checked by onnx.checker, serialized. Input and output names, shapes and
the dynamic axis come from the role's `contract.Interface`; what is the role's own here is only
which module computes it (`_MODULES`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import vae_runtime
from vae_runtime import contract as C
from vae_runtime.errors import VaeError, interruption
from vae_train.model import VAE

TRACE_BATCH = 2  # >= 2 at trace time, so no size-1 axis can be specialised into the graph
PRODUCER_VERSION = vae_runtime.__version__  # written into graphs and manifest
_PREFIX = "vae."  # the wrappers hold the model as `vae`; stripped so weights keep seed names


class ExportError(VaeError):
    """torch.onnx.export failed, or produced a graph that breaks the contract."""


class _Encoder(nn.Module):
    """The encoder graph: image (B, 1, 28, 28) -> mu, logvar (B, latent_dim)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode(torch.flatten(image, 1))  # (B, 784)


class _Decoder(nn.Module):
    """The decoder graph: z (B, latent_dim) -> image (B, 1, 28, 28), the sigmoid pixel means,
    and logits (B, 1, 28, 28), the values before the sigmoid (scoring needs them: in float32
    the sigmoid saturates at 1.0, and log(1 - p) is lost there)."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.vae.decode_logits(z).reshape(-1, *C.IMAGE_SHAPE)
        return torch.sigmoid(logits), logits


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision, deprecations): not the user's
    concern, and it would bury the verification table."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# The module that computes each role's graph from the VAE: the one thing per role not declared
# in the contract (its inputs and outputs are).
_MODULES: dict[str, type[nn.Module]] = {"encoder": _Encoder, "decoder": _Decoder}


def graph_bytes(
    role: str, model: VAE, opset: int, source: dict[str, str], training: dict[str, Any]
) -> bytes:
    """One graph exported, slimmed, stamped with its metadata and checked; serialized."""
    interface, latent_dim = C.INTERFACES[role], model.config.latent_dim
    # Example inputs of the declared shapes; the values do not matter to the trace.
    examples = tuple(torch.rand(TRACE_BATCH, *t.shape(latent_dim)) for t in interface.inputs)
    proto = _export_graph(_MODULES[role](model), examples, interface, opset)
    _slim(proto)
    _stamp(
        proto,
        C.build_metadata(
            role,
            model.config.latent_dim,
            producer_version=PRODUCER_VERSION,
            source=source,
            training=training,
        ),
    )
    _check(proto, C.graph_file(role), interface, latent_dim)
    data: bytes = proto.SerializeToString()
    return data


def _export_graph(
    module: nn.Module, examples: tuple[torch.Tensor, ...], interface: C.Interface, opset: int
) -> onnx.ModelProto:
    """torch.onnx.export (the dynamo exporter), in memory: the inputs and outputs named as
    `interface` declares them, each input's first axis the dynamic batch axis."""
    batch = torch.export.Dim(C.BATCH_AXIS)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module.eval(),
                examples,
                input_names=[t.name for t in interface.inputs],
                output_names=[t.name for t in interface.outputs],
                opset_version=opset,
                dynamic_shapes=tuple({0: batch} for _ in interface.inputs),
                external_data=False,
                optimize=True,  # constant folding and dead-code removal by onnxscript
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many internal types; all mean "it failed"
        interrupted = interruption(exc)
        if interrupted is not None:  # a Ctrl-C the exporter wrapped in its own error
            raise interrupted from None
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}): {first}") from None
    if program is None:  # only with dynamo=False and a file path, never here
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def _slim(model: onnx.ModelProto) -> None:
    """Remove what the runtime never needs: exporter metadata, doc strings, value_info shape
    annotations and unused initializers; give the weights their seed names (fc1.weight, ...)
    and the nodes short readable names. (torch 2.13's exporter, with optimize=True, already
    leaves no Identity node, local function or foreign opset domain: nothing to remove there.)"""
    graph = model.graph
    model.doc_string = graph.doc_string = ""
    del model.metadata_props[:]
    del graph.value_info[:]
    for value in (*graph.input, *graph.output):
        value.doc_string = ""
        del value.metadata_props[:]
    used = {name for node in graph.node for name in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    renames = {t.name: t.name.removeprefix(_PREFIX) for t in graph.initializer}
    for t in graph.initializer:
        t.name = renames[t.name]
    counts: dict[str, int] = {}
    io_names = {v.name for v in (*graph.input, *graph.output)}
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.doc_string = ""
        del node.metadata_props[:]
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else ""
        base = weight.removesuffix(".weight") if weight.endswith(".weight") else node.op_type
        base = base if base != node.op_type else base.lower()
        counts[base] = counts.get(base, 0) + 1
        node.name = base if counts[base] == 1 else f"{base}_{counts[base]}"
        # Intermediate tensors are named after the node that makes them (fc1, relu, ...).
        for old in node.output:
            if old not in io_names:
                renames[old] = node.name
        node.output[:] = [renames.get(name, name) for name in node.output]
        if node.op_type == "Reshape" and len(node.input) > 1:
            renames[node.input[1]] = f"{node.name}.shape"
            node.input[1] = renames[node.input[1]]
    for t in graph.initializer:
        t.name = renames.get(t.name, t.name)


def _stamp(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Producer fields and the contract's metadata_props."""
    model.producer_name = C.PRODUCER
    model.producer_version = PRODUCER_VERSION
    model.graph.name = metadata[C.META_ROLE]
    onnx.helper.set_model_props(model, metadata)


def io_signature(model: onnx.ModelProto) -> tuple[list[tuple[str, str, list[int | str]]], ...]:
    """The graph's (inputs, outputs) as (name, numpy dtype name, [dims]): a dim is its size, or
    its name where it is dynamic."""

    def one(value: onnx.ValueInfoProto) -> tuple[str, str, list[int | str]]:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return value.name, dtype, [d.dim_param or d.dim_value for d in tensor.shape.dim]

    return [one(v) for v in model.graph.input], [one(v) for v in model.graph.output]


def declared_signature(
    interface: C.Interface, latent_dim: int
) -> tuple[list[tuple[str, str, list[int | str]]], ...]:
    """What `io_signature` must give for a graph of `interface` and `latent_dim`: the declared
    names, dtype and shapes, behind the dynamic batch axis."""

    def one(t: C.TensorDecl) -> tuple[str, str, list[int | str]]:
        return t.name, interface.dtype, [C.BATCH_AXIS, *t.shape(latent_dim)]

    return [one(t) for t in interface.inputs], [one(t) for t in interface.outputs]


def _check(model: onnx.ModelProto, name: str, interface: C.Interface, latent_dim: int) -> None:
    """onnx.checker (full: with strict shape inference) and the role's declared interface:
    names, dtype, dynamic batch axis and shapes."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{name}: onnx.checker rejects the exported graph: {exc}") from None
    found, declared = io_signature(model), declared_signature(interface, latent_dim)
    for kind, got, want in zip(("inputs", "outputs"), found, declared, strict=True):
        if got != want:
            raise ExportError(
                f"{name}: {kind} {got} break the contract, expected {want} "
                f"('{C.BATCH_AXIS}' dynamic)"
            )
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ExportError(f"{name}: weight '{t.name}' refers to external data")
