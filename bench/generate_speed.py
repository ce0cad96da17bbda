"""Speed of the torch-free runtime against torch on the same weights, printed as one table.

    python bench/generate_speed.py --model model.pt --decoder decoder.onnx [--runs 7]

Measures, in one run:
  cold start   `vae-generate` for a 5x5 grid as a whole process (median of --runs) against a torch
               script that loads model.pt, decodes the same latents and writes the PNG;
  peak memory  of those two processes (max RSS, from wait4);
  throughput   images/s at batch 1, 64, 1024: onnxruntime (`Decoder.decode`) against torch eager
               on the same weights, each in a process of its own (the onnxruntime one without
               torch, as deployed), beside the arithmetic floor: the decoder's matmul FLOPs per
               image over the float32 matmul rate measured now (best of torch and numpy, 2048^3);
  bulk         `vae-generate -n 100000 --npy` as a whole process: time and peak memory (each
               run writes a new file: the previous one is deleted and synced away first).
Targets are printed beside each figure. Run it on a quiet machine: it is a
measurement, not a test. This script may import torch and vae_train; the runtime never does.

    python bench/generate_speed.py --precisions out/ [--data-dir MNIST] [--methods]

Precisions, for a folder exported with `vae-export --precision fp32,int8,fp16`: for
each precision and graph, file size, images/s at batch 1, 64 and 1024 (rounds alternate between
precisions, best of each) and the quality figures the export's gate recorded in manifest.json.
`--methods` adds the int8 method comparison behind the shipped choice: onnxruntime's static QDQ
quantization (MinMax, percentile and entropy calibration on test images and prior samples, the
same layers kept float32) against the shipped dynamic quantization, quality measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BATCHES = (1, 64, 1024)
ROUNDS = 5  # of the precision tables: each graph's best of ROUNDS alternating rounds

# The torch equivalent of `vae-generate --onnx decoder.onnx` (5x5 grid from seed 0).
TORCH_SCRIPT = """
import sys
import torch
from vae_train.checkpoint import load_checkpoint
from vae_runtime.images import save_png, tile
from vae_runtime.sampling import sample_latents
checkpoint = load_checkpoint(sys.argv[1])
model = checkpoint.build_model(sys.argv[1])
z = sample_latents(25, checkpoint.config.latent_dim, 0)
with torch.inference_mode():
    images = model.decode(torch.from_numpy(z)).reshape(25, 1, 28, 28).numpy()
save_png(tile(images, 5, 5), sys.argv[2])
"""


def run_process(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run `cmd` to completion: (wall seconds, peak RSS in MB). Fails loudly on a non-zero exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def median_process(
    cmd: list[str], cwd: Path, runs: int, fresh: Path | None = None
) -> tuple[float, float]:
    """Median wall time and peak RSS of `runs` runs after one warm-up run. `fresh`: an output to
    delete (and sync away) before each run, so that a run does not pay for the file system
    freeing the previous run's 300 MB file."""
    results = []
    for i in range(runs + 1):
        if fresh is not None:
            fresh.unlink(missing_ok=True)
            os.sync()
        result = run_process(cmd, cwd)
        if i:  # the first run warms the page cache: we measure start-up, not the disk
            results.append(result)
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def rate(fn: Callable[[], object], items: int, min_seconds: float = 0.5) -> float:
    """Items per second of `fn`, best of three timed rounds of at least `min_seconds` each."""
    fn()  # warm-up: first-run allocations, lazy initialisation
    reps = 1
    while True:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if time.perf_counter() - start >= min_seconds / 5:
            break
        reps *= 2
    best = 0.0
    for _ in range(3):
        n = reps * 5  # about min_seconds
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n * items / (time.perf_counter() - start))
    return best


def _matrices(n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)


def _dims(checkpoint: Path) -> tuple[int, int]:
    """(latent_dim, hidden_dim) of the model, from the checkpoint's config."""
    import torch

    config = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
    return int(config["latent_dim"]), int(config["hidden_dim"])


def worker(backend: str, checkpoint: Path, decoder_path: Path) -> dict[str, float]:
    """One backend's throughput at each batch size, and the matmul rate (FLOP/s of a 2048^3
    float32 product) measured with the same library: numpy beside onnxruntime, torch beside torch.
    The "ort" worker never imports torch."""
    from vae_runtime import sample_latents

    threads = len(os.sched_getaffinity(0))
    a, b = _matrices()
    flops = 2 * a.shape[0] ** 3
    result: dict[str, float] = {}
    if backend == "ort":
        from vae_runtime import Decoder

        decoder = Decoder.load(decoder_path, threads=threads)
        result["matmul"] = rate(lambda: a @ b, flops, 1.0)
        for batch in BATCHES:
            z = sample_latents(batch, decoder.latent_dim, 0)
            result[str(batch)] = rate(lambda z=z: decoder.decode(z), batch, 0.3)
        assert "torch" not in sys.modules, "the onnxruntime worker must run without torch"
    else:
        import torch

        from vae_train.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.build_model(checkpoint)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        result["matmul"] = rate(lambda: torch.mm(ta, tb), flops, 1.0)
        with torch.inference_mode():
            for batch in BATCHES:
                tz = torch.from_numpy(sample_latents(batch, ckpt.config.latent_dim, 0))
                result[str(batch)] = rate(lambda tz=tz: model.decode(tz), batch, 0.3)
    return result


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, tuple("-" * w for w in widths), *rows):
        print(
            " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _speeds(
    graphs: dict[str, object], inputs: dict[str, np.ndarray]
) -> dict[str, dict[int, float]]:
    """images/s of each graph at each batch size: rounds alternate between the graphs (best of
    ROUNDS), so a busy moment of the shared machine picks no winner."""
    best: dict[str, dict[int, float]] = {k: {} for k in graphs}
    for _ in range(ROUNDS):
        for key, graph in graphs.items():
            x = inputs[key]
            run = graph.decode if hasattr(graph, "decode") else graph.encode  # type: ignore[attr-defined]
            for batch in BATCHES:
                data = np.ascontiguousarray(x[:batch])
                speed = rate(lambda d=data, r=run, b=batch: r(d, batch_size=b), batch, 0.3)
                best[key][batch] = max(best[key].get(batch, 0.0), speed)
    return best


def precision_table(folder: Path, data_dir: Path | None) -> None:
    """Size, speed and the gate's quality figures of every graph in an export folder."""
    from vae_runtime import Decoder, Encoder, contract, sample_latents

    manifest = contract.Manifest.load(folder / contract.MANIFEST_FILE)
    graphs: dict[str, object] = {}
    for name, entry in manifest.files.items():
        kind = Encoder if entry.role == "encoder" else Decoder
        graphs[f"{entry.role} {entry.precision}"] = kind.load(
            folder / name, threads=len(os.sched_getaffinity(0))
        )
    images = _test_images(data_dir, 1024)
    z = sample_latents(1024, manifest.latent_dim, 0)
    inputs = {k: (images if k.startswith("encoder") else z) for k in graphs}
    speeds = _speeds(graphs, inputs)
    rows = []
    for name, entry in manifest.files.items():
        key = f"{entry.role} {entry.precision}"
        fp32 = speeds[f"{entry.role} fp32"]
        size_fp32 = manifest.files[contract.graph_file(entry.role)].size
        q = entry.quality
        quality = (
            ""
            if not q
            else (
                f"max {q['pixel_max_abs']:.4f} mean {q['pixel_mean_abs']:.5f}, "
                f"grid {q.get('grid_max_grey', 0):.0f}/255"
                if entry.role == "decoder"
                else f"mu max {q['mu_max_abs']:.4f} mean {q['mu_mean_abs']:.5f}"
            )
            + (f", BCE {q['bce_delta']:+.3f}" if q else "")
        )
        rows.append(
            (
                name,
                f"{entry.size / 1e6:.2f} MB ({100 * entry.size / size_fp32:.0f}%)",
                *(f"{speeds[key][b]:,.0f} ({speeds[key][b] / fp32[b]:.2f}x)" for b in BATCHES),
                quality,
            )
        )
    print(
        f"images/s (ratio to fp32), {len(os.sched_getaffinity(0))} threads; "
        "quality vs fp32 from manifest.json"
    )
    _table(("graph", "size", *(f"batch {b}" for b in BATCHES), "quality (gate)"), rows)


def _test_images(data_dir: Path | None, n: int) -> np.ndarray:
    """float32 (n, 1, 28, 28): MNIST test images from `data_dir`, else uniform noise."""
    if data_dir is None:
        return np.random.default_rng(0).uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)
    from vae_runtime.idx import IMAGES_MAGIC, read_idx
    from vae_train.data import TEST_IMAGES, find_images

    path = find_images(data_dir, TEST_IMAGES)
    if path is None:
        sys.exit(f"{data_dir}: no {TEST_IMAGES}")
    return (read_idx(path, IMAGES_MAGIC, limit=n).astype(np.float32) / 255).reshape(-1, 1, 28, 28)


def int8_methods(folder: Path, data_dir: Path | None) -> None:
    """The shipped dynamic int8 against onnxruntime's static QDQ with three calibrations."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from vae_export.precision import _abs, _latent_layers, lower
    from vae_runtime import Decoder, Encoder, contract, sample_latents

    manifest = contract.Manifest.load(folder / contract.MANIFEST_FILE)
    images = _test_images(data_dir, 10_000)
    z = sample_latents(10_000, manifest.latent_dim, 0)
    fp32 = {r: (folder / contract.graph_file(r)).read_bytes() for r in contract.ROLES}
    ref_enc = Encoder.load(folder / contract.ENCODER_FILE)
    ref_dec = Decoder.load(folder / contract.DECODER_FILE)
    mu, _ = ref_enc.encode(images)

    class Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, name: str, data: np.ndarray) -> None:
            self.it = iter({name: b} for b in np.array_split(data, 10))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    calibration = {  # held out from the measured sets where possible
        "encoder": (contract.ENCODER_INPUT, images[-2000:]),
        "decoder": (
            contract.DECODER_INPUT,
            np.concatenate([mu[-1000:], sample_latents(1000, manifest.latent_dim, 1)]),
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, dict[str, Path]] = {"dynamic (shipped)": {}}
        for role in contract.ROLES:
            path = Path(tmp) / f"dynamic.{role}.onnx"
            path.write_bytes(lower(fp32[role], role, "int8"))
            variants["dynamic (shipped)"][role] = path
        for method in (
            CalibrationMethod.MinMax,
            CalibrationMethod.Percentile,
            CalibrationMethod.Entropy,
        ):
            label = f"static QDQ {method.name}"
            variants[label] = {}
            for role in contract.ROLES:
                model = onnx.load_from_string(fp32[role])
                kept = _latent_layers(model, role)
                path = Path(tmp) / f"{method.name}.{role}.onnx"
                quantize_static(
                    model,
                    path,
                    Batches(*calibration[role]),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    calibrate_method=method,
                    nodes_to_exclude=kept,
                    extra_options={"CalibPercentile": 99.999}
                    if method == CalibrationMethod.Percentile
                    else {},
                )
                variants[label][role] = path
        graphs: dict[str, object] = {}
        for label, paths in variants.items():
            graphs[f"{label} decoder"] = Decoder.load(paths["decoder"])
            graphs[f"{label} encoder"] = Encoder.load(paths["encoder"])
        inputs = {k: (images if k.endswith("encoder") else z) for k in graphs}
        speeds = _speeds(graphs, inputs)
        ref_prior = ref_dec.decode(z)
        for label in variants:
            dec, enc = graphs[f"{label} decoder"], graphs[f"{label} encoder"]
            prior_max, prior_mean = _abs(ref_prior, dec.decode(z))  # type: ignore[attr-defined]
            mu_max, mu_mean = _abs(mu, enc.encode(images)[0])  # type: ignore[attr-defined]
            rows.append(
                (
                    label,
                    f"{prior_max:.4f} / {prior_mean:.5f}",
                    f"{mu_max:.4f} / {mu_mean:.5f}",
                    *(f"{speeds[f'{label} decoder'][b]:,.0f}" for b in (1, 1024)),
                    f"{speeds[f'{label} encoder'][1024]:,.0f}",
                )
            )
    print(
        "int8 methods: decoder pixels over 10,000 prior samples, encoder mu over test images, "
        "images/s"
    )
    _table(
        ("method", "decoder max / mean", "mu max / mean", "dec b1", "dec b1024", "enc b1024"), rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model.pt")
    parser.add_argument("--decoder", type=Path, help="decoder.onnx exported from that model.pt")
    parser.add_argument("--precisions", type=Path, help="an export folder with int8/fp16 graphs")
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX folder (test images)")
    parser.add_argument("--methods", action="store_true", help="compare int8 methods too")
    parser.add_argument("--runs", type=int, default=7, help="process runs per median")
    parser.add_argument("--bulk", type=int, default=100_000, help="samples in the bulk run")
    parser.add_argument("--worker", choices=("ort", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precisions is not None:
        precision_table(args.precisions, args.data_dir)
        if args.methods:
            print()
            int8_methods(args.precisions, args.data_dir)
        return
    if args.model is None or args.decoder is None:
        parser.error("--model and --decoder are required (or --precisions)")
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.decoder)))
        return
    checkpoint, decoder_path = args.model.resolve(), args.decoder.resolve()
    generate = str(Path(sys.executable).parent / "vae-generate")
    rows: list[tuple[str, str, str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours_s, ours_mb = median_process(
            [generate, "--onnx", str(decoder_path), "--force"], work, args.runs
        )
        torch_cmd = [sys.executable, "-c", TORCH_SCRIPT, str(checkpoint), "torch.png"]
        ref_s, ref_mb = median_process(torch_cmd, work, args.runs)
        same = (work / "samples.png").read_bytes() == (work / "torch.png").read_bytes()
        rows.append(
            (
                "cold start 5x5 (s, median)",
                f"{ours_s:.3f}",
                f"{ref_s:.3f}",
                f"{ref_s / ours_s:.1f}x",
                "<= 0.35 s, >= 5x",
            )
        )
        rows.append(
            (
                "peak RSS 5x5 (MB)",
                f"{ours_mb:.0f}",
                f"{ref_mb:.0f}",
                f"{ref_mb / ours_mb:.1f}x",
                "<= 80 MB",
            )
        )
        bulk_cmd = [
            generate,
            "--onnx",
            str(decoder_path),
            "-n",
            str(args.bulk),
            "--npy",
            "bulk.npy",
            "--no-grid",
        ]
        bulk_s, bulk_mb = median_process(bulk_cmd, work, 3, fresh=work / "bulk.npy")
        rows.append((f"bulk {args.bulk:,} -> .npy (s)", f"{bulk_s:.2f}", "", "", "< 2 s"))
        rows.append((f"bulk {args.bulk:,} peak RSS (MB)", f"{bulk_mb:.0f}", "", "", "< 150 MB"))

    # Throughput: each backend in a process of its own, as deployed (the runtime's has no torch
    # loaded: torch's idle OpenMP threads spin for a while after each call and would take the
    # cores from onnxruntime's). Rounds alternate, best of each: a busy moment picks no winner.
    best: dict[str, dict[str, float]] = {"ort": {}, "torch": {}}
    for _ in range(3):
        for backend in ("ort", "torch"):
            cmd = [sys.executable, __file__, "--worker", backend, "--model", str(checkpoint)]
            out = subprocess.run(
                [*cmd, "--decoder", str(decoder_path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for key, value in json.loads(out).items():
                best[backend][key] = max(best[backend].get(key, 0.0), value)
    for batch in BATCHES:
        ours, ref = best["ort"][str(batch)], best["torch"][str(batch)]
        target = ">= torch" + (", >= 85% floor" if batch == 1024 else "")
        rows.append(
            (
                f"images/s, batch {batch}",
                f"{ours:,.0f}",
                f"{ref:,.0f}",
                f"{ours / ref:.2f}x",
                target,
            )
        )
    peak = max(best["ort"]["matmul"], best["torch"]["matmul"])
    peak_source = "numpy @" if best["ort"]["matmul"] >= best["torch"]["matmul"] else "torch.mm"
    threads = len(os.sched_getaffinity(0))
    d, h = _dims(checkpoint)
    flops_per_image = 2 * (d * h + h * 784)  # the two matmuls; bias, ReLU, sigmoid are O(h + 784)
    floor = peak / flops_per_image
    at_1024 = (best["ort"]["1024"], best["torch"]["1024"])
    rows.append(
        (
            "  batch 1024, % of floor",
            f"{100 * at_1024[0] / floor:.0f}%",
            f"{100 * at_1024[1] / floor:.0f}%",
            "",
            ">= 85%",
        )
    )

    print(
        f"threads {threads}; matmul rate {peak / 1e9:.1f} GFLOP/s ({peak_source}); decoder "
        f"{flops_per_image:,} FLOPs/image -> floor {floor:,.0f} images/s"
    )
    print(f"PNG from the torch script identical to vae-generate's: {same}")
    widths = [
        max(len(r[i]) for r in [*rows, ("metric", "ours (ORT)", "torch", "ratio", "target")])
        for i in range(5)
    ]
    header = ("metric", "ours (ORT)", "torch", "ratio", "target")
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(
            " | ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


if __name__ == "__main__":
    main()
