"""int8 and fp16 graphs against fp32, in alternating pairs: `generate_speed.py --precisions`.

Each figure is one lower-precision graph against the fp32 graph of the same role, in-process, at
one batch size: `measure.alternate` (seconds per call, samples of at least --min-sample-s), the
speed-up the median of the pairs' ratios with its spread. `--methods` compares int8 methods:
the shipped dynamic quantization (unsigned per-channel weights, made signed as the runtime loads
them on a VNNI CPU), the same file run as stored, the cheap variants of it (signed weights,
per-tensor weights, reduced range) and onnxruntime's static QDQ with three calibrations, each
against fp32; quality measured here, on this CPU, every graph loaded as the runtime loads it
(vae_runtime.rewrite: signed weights are exact there on every x86 CPU).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from measure import Comparison, alternate, verdict

BATCHES = (1, 64, 1024)
# (role, precision, batch): target speed-up over fp32
TARGETS = {
    ("decoder", "int8", 1024): 2.2,
    ("decoder", "int8", 1): 1.1,
    ("encoder", "int8", 1024): 2.2,
}


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A Markdown table, columns padded."""
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, tuple("-" * w for w in widths), *rows):
        cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
        print("| " + " | ".join(cells) + " |")


def _runner(graph: Any) -> Any:
    return graph.decode if hasattr(graph, "decode") else graph.encode


def speedup(
    graph: Any, fp32: Any, x: np.ndarray, batch: int, pairs: int, min_sample_s: float
) -> Comparison:
    """`graph` (A) against `fp32` (B) on the first `batch` rows of `x`: ratio = fp32's seconds
    over the graph's, per pair."""
    data = np.ascontiguousarray(x[:batch])
    run, ref = _runner(graph), _runner(fp32)
    return alternate(
        lambda: run(data, batch_size=batch),
        lambda: ref(data, batch_size=batch),
        pairs,
        min_sample_s=min_sample_s,
        label=f"{Path(graph.path).name} against {Path(fp32.path).name}, batch {batch}",
    )


def test_images(data_dir: Path | None, n: int) -> np.ndarray:
    """float32 (n, 1, 28, 28): MNIST test images from `data_dir`, else uniform noise."""
    if data_dir is None:
        return np.random.default_rng(0).uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)
    from vae_runtime.idx import IMAGES_MAGIC, read_idx
    from vae_train.data import TEST_IMAGES, find_images

    path = find_images(data_dir, TEST_IMAGES)
    if path is None:
        sys.exit(f"{data_dir}: no {TEST_IMAGES}")
    pixels: np.ndarray = read_idx(path, IMAGES_MAGIC, limit=n).astype(np.float32) / 255
    return pixels.reshape(-1, 1, 28, 28)


def _quality(q: dict[str, Any]) -> str:
    """The gate's figures as manifest.json records them (names as written there)."""
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float | int) else f"{k} {v}" for k, v in q.items()
    )


def precision_table(folder: Path, data_dir: Path | None, pairs: int, min_sample_s: float) -> None:
    """Size, speed-up over fp32 at each batch and the gate's quality figures of every graph."""
    from vae_runtime import Decoder, Encoder, contract, sample_latents

    threads = len(os.sched_getaffinity(0))
    manifest = contract.Manifest.load(folder / contract.MANIFEST_FILE)
    graphs: dict[tuple[str, str], Any] = {}
    for name, entry in manifest.files.items():
        kind = Encoder if entry.role == "encoder" else Decoder
        graphs[(entry.role, entry.precision)] = kind.load(folder / name, threads=threads)
    inputs = {
        "encoder": test_images(data_dir, 1024),
        "decoder": sample_latents(1024, manifest.latent_dim, 0),
    }
    rows, verdicts = [], []
    for name, entry in manifest.files.items():
        role, precision = entry.role, entry.precision
        size_fp32 = manifest.files[contract.graph_file(role)].size
        cells = []
        for batch in BATCHES:
            if precision == "fp32":
                cells.append("")
                continue
            c = speedup(
                graphs[(role, precision)],
                graphs[(role, "fp32")],
                inputs[role],
                batch,
                pairs,
                min_sample_s,
            )
            rate = batch / c.seconds_a.median
            cells.append(f"{rate:,.0f}/s, {c.ratio.show(2, 'x')}")
            target = TARGETS.get((role, precision, batch))
            if target is not None:
                verdicts.append(
                    f"{role} {precision} batch {batch}: {c.ratio.median:.2f}x "
                    f"(target >= {target}x: {verdict(c.ratio.median, target)})"
                )
        size = f"{entry.size / 1e6:.2f} MB ({100 * entry.size / size_fp32:.0f}%)"
        rows.append((name, size, *cells, _quality(entry.quality or {})))
    print(
        f"images/s of each graph and its speed-up over the fp32 graph (median of {pairs} "
        f"alternating pairs: min-max, IQR), {threads} threads; quality from manifest.json"
    )
    _table(("graph", "size", *(f"batch {b}" for b in BATCHES), "quality (gate)"), rows)
    print()
    for line in verdicts:
        print(line)
    print("int8 files <= 30% of fp32: see the size column")
    # The method's own check: a graph against a second session of itself must read 1.00x.
    twin = Decoder.load(folder / contract.graph_file("decoder"), threads=threads)
    c = speedup(twin, graphs[("decoder", "fp32")], inputs["decoder"], 1024, pairs, min_sample_s)
    print("control, decoder.onnx against a second session of itself, batch 1024:", end=" ")
    print(c.ratio.show(2, "x"))


def _dynamic(
    fp32: bytes, role: str, signed: bool, per_channel: bool, reduce_range: bool, out: Path
) -> Path:
    """The shipped quantization's recipe (vae_export.precision) with other weight settings."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vae_export.precision import _latent_layers, _quiet_quantizer

    model = onnx.load_from_string(fp32)
    kept = _latent_layers(model, role)
    with _quiet_quantizer():
        quantize_dynamic(
            model,
            out,
            weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
            nodes_to_exclude=[*kept, *(f"{name}_MatMul" for name in kept)],
        )
    return out


def _static(fp32: bytes, role: str, method: Any, data: tuple[str, np.ndarray], out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from vae_export.precision import _latent_layers, _quiet_quantizer

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, name: str, values: np.ndarray) -> None:
            self.it = iter({name: b} for b in np.array_split(values, 10))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    model = onnx.load_from_string(fp32)
    # the calibrators print their progress on stdout
    with _quiet_quantizer(), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            model,
            out,
            Batches(*data),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=method,
            nodes_to_exclude=_latent_layers(model, role),
            extra_options={"CalibPercentile": 99.999}
            if method == CalibrationMethod.Percentile
            else {},
        )
    return out


def op_shares(path: Path, x: np.ndarray, calls: int) -> dict[str, float]:
    """Share of each operator in the kernel time of `calls` runs of the graph at `path` on `x`
    (onnxruntime's profiler, loaded as the runtime loads it: its options, vae_runtime.rewrite)."""
    import json

    import onnxruntime as ort

    from vae_runtime import rewrite
    from vae_runtime.session import session_options

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "vae-bench-profile")
    graph = rewrite.prepare(path.read_bytes())
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(calls):
        session.run(None, {name: x})
    trace = Path(session.end_profiling())
    totals: dict[str, float] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"]
    trace.unlink()
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def profile(folder: Path, data_dir: Path | None, calls: int) -> None:
    """Where the int8 graphs' time goes at batch 1024, operator by operator."""
    from vae_runtime import contract, sample_latents

    manifest = contract.Manifest.load(folder / contract.MANIFEST_FILE)
    inputs = {
        "encoder": test_images(data_dir, 1024),
        "decoder": sample_latents(1024, manifest.latent_dim, 0),
    }
    for name, entry in manifest.files.items():
        if entry.precision in ("fp32", "int8"):
            shares = op_shares(folder / name, inputs[entry.role], calls)
            text = ", ".join(f"{op} {100 * share:.0f}%" for op, share in shares.items())
            print(
                f"{name} (the full graph), batch 1024, share of kernel time over {calls} "
                f"calls: {text}"
            )


def _flat_logits(graph: bytes) -> bytes:
    """The decoder graph with `logits` left as the last layer's own (N, 784) output and `image`
    = Sigmoid(Reshape(logits)) still (N, 1, 28, 28): the Reshape then feeds no graph output, so
    onnxruntime copies nothing. Not the contract (it declares (N, 1, 28, 28) logits)."""
    import onnx

    model = onnx.load_from_string(graph)
    (reshape,) = (n for n in model.graph.node if n.op_type == "Reshape")
    flat = reshape.input[0]
    for node in model.graph.node:
        node.output[:] = ["logits" if o == flat else o for o in node.output]
    reshape.input[0], reshape.output[0] = "logits", "logits_4d"
    (sigmoid,) = (n for n in model.graph.node if n.op_type == "Sigmoid")
    sigmoid.input[0] = "logits_4d"
    (out,) = (o for o in model.graph.output if o.name == "logits")
    dims = out.type.tensor_type.shape.dim
    dims[1].dim_value = 784
    del dims[2:]
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def flat_logits(folder: Path, pairs: int, min_sample_s: float) -> None:
    """What the decoder's image-only view buys (vae_runtime.rewrite), and what a flat `logits`
    output would (docs/benchmarks.md#precisions): at batch 1024, the fp32 and int8 decoders as
    exported (the full graph, fetching only `image`), as the runtime runs `decode` (the graph
    without its `logits` output) and in the flat-logits form, each against the full graph, and
    int8 over fp32 in each form (raw sessions, loaded as the runtime loads graphs, run as
    `Decoder.decode` does: the image output and its bit check; the runtime refuses the flat
    form)."""
    import onnxruntime as ort

    from vae_runtime import contract, rewrite, sample_latents
    from vae_runtime.session import session_options

    z = sample_latents(1024, contract.Manifest.load(folder / contract.MANIFEST_FILE).latent_dim, 0)
    runs = {}
    forms = ("full graph", "image-only view", "flat")
    for precision in ("fp32", "int8"):
        graph = rewrite.prepare((folder / contract.graph_file("decoder", precision)).read_bytes())
        view = rewrite.without_outputs(graph, {contract.DECODER_LOGITS})
        if view is None:
            raise SystemExit(f"the {precision} decoder has no {contract.DECODER_LOGITS} output")
        for form, data in zip(forms, (graph, view, _flat_logits(graph)), strict=True):
            session = ort.InferenceSession(
                data, session_options(), providers=["CPUExecutionProvider"]
            )

            def run(session: ort.InferenceSession = session) -> np.ndarray:
                (images,) = session.run([contract.DECODER_OUTPUT], {contract.DECODER_INPUT: z})
                if images.view(np.uint32).max() > np.float32(1.0).view(np.uint32):
                    raise SystemExit("a decoder image outside [0, 1]")
                return images

            runs[(precision, form)] = run
        for form in forms[1:]:
            if not (runs[(precision, form)]() == runs[(precision, forms[0])]()).all():
                raise SystemExit(f"the {precision} decoder's images differ in the {form} form")
    print("decoder forms, batch 1024, median of alternating pairs (min-max, IQR):")
    for precision in ("fp32", "int8"):
        for form in forms[1:]:
            c = alternate(
                runs[(precision, form)],
                runs[(precision, forms[0])],
                pairs,
                min_sample_s=min_sample_s,
                label=f"{precision} {form} against the full graph",
            )
            print(f"  {precision} decoder, {form} over the full graph: {c.ratio.show(2, 'x')}")
    for form in forms:
        c = alternate(
            runs[("int8", form)],
            runs[("fp32", form)],
            pairs,
            min_sample_s=min_sample_s,
            label=f"int8 against fp32, {form}",
        )
        print(f"  int8 over fp32, {form}: {c.ratio.show(2, 'x')}")


@contextlib.contextmanager
def _as_stored() -> Any:
    """Graphs loaded in this block run as stored: no load-time int8 weight conversion."""
    from vae_runtime import rewrite

    real = rewrite.prepare
    rewrite.prepare = lambda data: data
    try:
        yield
    finally:
        rewrite.prepare = real


def int8_methods(
    folder: Path, data_dir: Path | None, pairs: int, min_sample_s: float, n: int
) -> None:
    """The shipped dynamic int8, its cheap variants and static QDQ, each against fp32."""
    from onnxruntime.quantization import CalibrationMethod

    from vae_export.precision import _abs
    from vae_runtime import Decoder, Encoder, contract, sample_latents

    manifest = contract.Manifest.load(folder / contract.MANIFEST_FILE)
    images = test_images(data_dir, n)
    z = sample_latents(n, manifest.latent_dim, 0)
    fp32 = {r: (folder / contract.graph_file(r)).read_bytes() for r in contract.ROLES}
    ref = {
        "encoder": Encoder.load(folder / contract.ENCODER_FILE),
        "decoder": Decoder.load(folder / contract.DECODER_FILE),
    }
    mu, _ = ref["encoder"].encode(images)
    ref_prior = ref["decoder"].decode(z)
    held = max(n // 5, 10)  # calibration data, held out of the measured sets where possible
    calibration = {
        "encoder": (contract.ENCODER_INPUT, images[-held:]),
        "decoder": (
            contract.DECODER_INPUT,
            np.concatenate([mu[-held // 2 :], sample_latents(held // 2, manifest.latent_dim, 1)]),
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, dict[str, Path]] = {}
        for i, (label, signed, per_channel, reduce) in enumerate(
            (
                ("dynamic, per-channel weights (shipped)", False, True, False),
                ("dynamic, per-channel, signed weights", True, True, False),
                ("dynamic, per-tensor weights", False, False, False),
                ("dynamic, per-channel, signed, reduced range", True, True, True),
            )
        ):
            # a file per variant: their labels share their first words
            variants[label] = {
                r: _dynamic(
                    fp32[r], r, signed, per_channel, reduce, Path(tmp) / f"dynamic{i}.{r}.onnx"
                )
                for r in contract.ROLES
            }
        for method in (
            CalibrationMethod.MinMax,
            CalibrationMethod.Percentile,
            CalibrationMethod.Entropy,
        ):
            variants[f"static QDQ, {method.name}"] = {
                r: _static(fp32[r], r, method, calibration[r], Path(tmp) / f"{method.name}.{r}")
                for r in contract.ROLES
            }
        stored = "dynamic, per-channel, as stored (unsigned, not converted at load)"
        variants[stored] = variants["dynamic, per-channel weights (shipped)"]
        shipped = folder / contract.graph_file("decoder", "int8")
        if shipped.exists():  # the "shipped" row must be what vae-export ships, bit for bit
            mine = Decoder.load(variants["dynamic, per-channel weights (shipped)"]["decoder"])
            if not np.array_equal(mine.decode(z), Decoder.load(shipped).decode(z)):
                raise SystemExit(f"the 'shipped' row's decoder differs from {shipped}")
        for label, paths in variants.items():
            with _as_stored() if label == stored else contextlib.nullcontext():
                dec, enc = Decoder.load(paths["decoder"]), Encoder.load(paths["encoder"])
            prior_max, prior_mean = _abs(ref_prior, dec.decode(z))
            mu_max, mu_mean = _abs(mu, enc.encode(images)[0])
            figures = [
                speedup(dec, ref["decoder"], z, 1, pairs, min_sample_s),
                speedup(dec, ref["decoder"], z, 1024, pairs, min_sample_s),
                speedup(enc, ref["encoder"], images, 1024, pairs, min_sample_s),
            ]
            rows.append(
                (
                    label,
                    f"{prior_max:.4f} / {prior_mean:.5f}",
                    f"{mu_max:.4f} / {mu_mean:.5f}",
                    *(c.ratio.show(2, "x") for c in figures),
                )
            )
    print(
        f"int8 methods: decoder pixels over {n:,} prior samples, encoder mu over {n:,} test "
        f"images; speed-up over fp32, median of {pairs} alternating pairs (min-max, IQR)"
    )
    _table(
        ("method", "decoder max / mean", "mu max / mean", "dec b1", "dec b1024", "enc b1024"), rows
    )
