"""Speed of the torch-free runtime against torch on the same weights, printed as one table.

    python bench/generate_speed.py --model model.pt --decoder decoder.onnx [--pairs 7] [--quick]

Every comparison runs its two contenders in alternating pairs (bench/measure.py): the figure is
the median of the pairs' ratios, printed with min-max and interquartile range. In one run:
  cold start   `vae-generate` for a 5x5 grid as a whole process against a torch script that loads
               model.pt, decodes the same latents and writes the PNG (byte-identical, checked);
  peak memory  of those two processes (max RSS over the runs, from wait4);
  throughput   images/s at batch 1, 64, 1024: onnxruntime (`Decoder.decode`) against torch eager
               on the same weights, each in a process of its own (the onnxruntime one without
               torch, as deployed), a pair of worker processes per pair; beside the arithmetic
               floor: the decoder's matmul FLOPs per image over the float32 matmul rate measured
               in the same workers (best of numpy and torch, 2048^3);
  bulk         `vae-generate -n 100000 --npy` as a whole process, alone: median time (min-max)
               and peak memory (each run writes a new file: the previous one is deleted first).
Targets are printed beside each figure, and a missed one says so. Run it on a quiet machine: it
is a measurement, not a test. This script may import torch and vae_train; the runtime never does.

    python bench/generate_speed.py --precisions out/ [--data-dir MNIST] [--methods] [--quick]

Precisions (bench/precision_speed.py), for a folder exported with `vae-export --precision
fp32,int8,fp16`: each graph against the fp32 graph of its role, in-process, at batch 1, 64 and
1024, with the file sizes and the quality figures the export's gate recorded. `--methods` adds
the int8 method comparison behind the shipped choice, the decoder's forms at batch 1024 (the
full graph, the image-only view `decode` runs, and a flat (N, 784) `logits`, not shipped: a
contract change), and where the fp32 and int8 graphs spend their time at batch 1024, operator by
operator (onnxruntime's profiler).
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
from pathlib import Path

import numpy as np
from measure import (
    MIN_PAIRS,
    alternate,
    alternate_samples,
    calibrate,
    print_machine,
    repeat,
    spread,
    verdict,
)
from precision_speed import flat_logits, int8_methods, precision_table, profile

BATCHES = (1, 64, 1024)

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


def rate(fn: object, items: int, min_sample_s: float, samples: int = 5) -> float:
    """Items per second of `fn`: the median of `samples` samples of at least `min_sample_s`."""
    assert callable(fn)
    fn()  # warm-up: first-run allocations, lazy initialisation
    loops = calibrate(fn, min_sample_s)
    seconds = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        seconds.append((time.perf_counter() - start) / loops)
    return items / statistics.median(seconds)


def _dims(checkpoint: Path) -> tuple[int, int]:
    """(latent_dim, hidden_dim) of the model, from the checkpoint's config."""
    import torch

    config = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]
    return int(config["latent_dim"]), int(config["hidden_dim"])


def worker(backend: str, checkpoint: Path, decoder_path: Path, quick: bool) -> dict[str, float]:
    """One backend's images/s at each batch size, and the matmul rate (FLOP/s of an n^3 float32
    product) with the same library: numpy beside onnxruntime, torch beside torch. The "ort"
    worker never imports torch."""
    from vae_runtime import sample_latents

    threads = len(os.sched_getaffinity(0))
    n, min_s = (256, 0.005) if quick else (2048, 0.1)
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    flops = 2 * n**3
    result: dict[str, float] = {}
    if backend == "ort":
        from vae_runtime import Decoder

        decoder = Decoder.load(decoder_path, threads=threads)
        result["matmul"] = rate(lambda: a @ b, flops, 2 * min_s)
        for batch in BATCHES:
            z = sample_latents(batch, decoder.latent_dim, 0)
            result[str(batch)] = rate(lambda z=z: decoder.decode(z), batch, min_s)
        assert "torch" not in sys.modules, "the onnxruntime worker must run without torch"
    else:
        import torch

        from vae_train.checkpoint import load_checkpoint

        torch.set_num_threads(threads)
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.build_model(checkpoint)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        result["matmul"] = rate(lambda: torch.mm(ta, tb), flops, 2 * min_s)
        with torch.inference_mode():
            for batch in BATCHES:
                tz = torch.from_numpy(sample_latents(batch, ckpt.config.latent_dim, 0))
                result[str(batch)] = rate(lambda tz=tz: model.decode(tz), batch, min_s)
    return result


def throughput(
    checkpoint: Path, decoder_path: Path, pairs: int, quick: bool
) -> dict[str, list[dict[str, float]]]:
    """Worker processes in alternating pairs (ort, torch / torch, ort / ...): each pair's
    figures, in pair order."""
    found: dict[str, list[dict[str, float]]] = {"ort": [], "torch": []}

    def sampler(backend: str) -> float:
        cmd = [sys.executable, __file__, "--worker", backend, "--model", str(checkpoint)]
        out = subprocess.run(
            [*cmd, "--decoder", str(decoder_path), *(["--quick"] if quick else [])],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found[backend].append(json.loads(out))
        return 1.0  # the figures are in `found`; alternate_samples only keeps the order

    alternate_samples(lambda: sampler("ort"), lambda: sampler("torch"), pairs, warmup=0)
    return found


def _print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("metric", "vae-generate (onnxruntime)", "torch", "ratio", "target")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def compare(checkpoint: Path, decoder_path: Path, pairs: int, bulk: int, quick: bool) -> None:
    """The runtime against torch: cold start, memory, bulk, throughput."""
    generate = str(Path(sys.executable).parent / "vae-generate")
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours_cmd = [generate, "--onnx", str(decoder_path), "--force"]
        torch_cmd = [sys.executable, "-c", TORCH_SCRIPT, str(checkpoint), "torch.png"]
        cold = alternate(ours_cmd, torch_cmd, pairs, cwd=work)
        same = (work / "samples.png").read_bytes() == (work / "torch.png").read_bytes()
        ours_s, ours_mb, ref_mb = cold.seconds_a.median, cold.peak_mb["a"], cold.peak_mb["b"]
        rows.append(
            (
                "cold start 5x5, whole process",
                cold.seconds_a.show(3, " s"),
                cold.seconds_b.show(3, " s"),
                cold.ratio.show(1, "x"),
                f"<= 0.35 s: {verdict(ours_s, 0.35, False)}; "
                f">= 5x: {verdict(cold.ratio.median, 5)}",
            )
        )
        rows.append(
            (
                "peak RSS 5x5 (MB, max of the runs)",
                f"{ours_mb:.0f}",
                f"{ref_mb:.0f}",
                f"{ref_mb / ours_mb:.1f}x",
                f"<= 80 MB: {verdict(ours_mb, 80, False)}",
            )
        )
        out = work / "bulk.npy"

        def fresh() -> None:  # a run must not pay for freeing the previous run's file
            out.unlink(missing_ok=True)
            os.sync()

        bulk_cmd = [generate, "--onnx", str(decoder_path), "-n", str(bulk), "--npy", str(out)]
        bulk_s, bulk_mb = repeat([*bulk_cmd, "--no-grid"], pairs, cwd=work, before=fresh)
        rows.append(
            (
                f"{bulk:,} samples -> .npy, whole process",
                bulk_s.show(2, " s"),
                "",
                "",
                f"< 2 s: {verdict(bulk_s.median, 2, False)}",
            )
        )
        rows.append(
            (
                f"{bulk:,} samples, peak RSS (MB)",
                f"{bulk_mb:.0f}",
                "",
                "",
                f"< 150 MB: {verdict(bulk_mb, 150, False)}",
            )
        )

    found = throughput(checkpoint, decoder_path, pairs, quick)
    for batch in BATCHES:
        ours = [p[str(batch)] for p in found["ort"]]
        ref = [p[str(batch)] for p in found["torch"]]
        ratio = spread([o / r for o, r in zip(ours, ref, strict=True)])
        rows.append(
            (
                f"images/s, batch {batch}",
                f"{statistics.median(ours):,.0f}",
                f"{statistics.median(ref):,.0f}",
                ratio.show(2, "x"),
                f">= torch: {verdict(ratio.median, 1.0)}",
            )
        )
    d, h = _dims(checkpoint)
    flops_per_image = 2 * (d * h + h * 784)  # the two matmuls; bias, ReLU, sigmoid are O(h + 784)
    # per pair: the better matmul rate of the two workers sets that pair's floor
    peaks = [
        max(o["matmul"], t["matmul"]) for o, t in zip(found["ort"], found["torch"], strict=True)
    ]
    share = {
        k: spread(
            [p["1024"] * flops_per_image / peak for p, peak in zip(found[k], peaks, strict=True)]
        )
        for k in found
    }
    rows.append(
        (
            "  batch 1024, share of the floor",
            f"{100 * share['ort'].median:.0f}% ({100 * share['ort'].low:.0f}-"
            f"{100 * share['ort'].high:.0f}%)",
            f"{100 * share['torch'].median:.0f}%",
            "",
            f">= 85%: {verdict(share['ort'].median, 0.85)}",
        )
    )
    peak = statistics.median(peaks)
    print(
        f"matmul rate {peak / 1e9:.1f} GFLOP/s (median over the pairs of the better of numpy "
        f"and torch); decoder {flops_per_image:,} FLOPs/image -> floor "
        f"{peak / flops_per_image:,.0f} images/s"
    )
    print(f"PNG from the torch script identical to vae-generate's: {same}")
    print(f"ratios: medians of {pairs} alternating pairs (min-max, IQR)")
    _print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model.pt")
    parser.add_argument("--decoder", type=Path, help="decoder.onnx exported from that model.pt")
    parser.add_argument("--precisions", type=Path, help="an export folder with int8/fp16 graphs")
    parser.add_argument("--data-dir", type=Path, help="MNIST IDX folder (test images)")
    parser.add_argument("--methods", action="store_true", help="compare int8 methods too")
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs per figure (>= 5)")
    parser.add_argument("--bulk", type=int, default=100_000, help="samples in the bulk run")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script")
    parser.add_argument("--worker", choices=("ort", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.decoder, args.quick)))
        return
    pairs = MIN_PAIRS if args.quick else args.pairs
    print_machine("bench/generate_speed.py" + (" --quick: not a figure" if args.quick else ""))
    if args.precisions is not None:
        min_s = 0.002 if args.quick else 0.1
        precision_table(args.precisions, args.data_dir, pairs, min_s)
        if args.methods:
            print()
            n = 1000 if args.quick else 10_000
            int8_methods(args.precisions, args.data_dir, pairs, min_s, n)
            print()
            flat_logits(args.precisions, pairs, min_s)
            print()
            profile(args.precisions, args.data_dir, 10 if args.quick else 200)
        return
    if args.model is None or args.decoder is None:
        parser.error("--model and --decoder are required (or --precisions)")
    bulk = 1000 if args.quick else args.bulk
    compare(args.model.resolve(), args.decoder.resolve(), pairs, bulk, args.quick)


if __name__ == "__main__":
    main()
