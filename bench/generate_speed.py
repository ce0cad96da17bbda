"""Speed of the torch-free runtime against torch on the same weights, printed as one table.

    python bench/generate_speed.py --model model.pt --decoder decoder.onnx [--runs 7]

Measures, in one run:
  cold start   `vae-generate` for a 5x5 grid as a whole process (median of --runs) against a torch
               script that loads model.pt, decodes the same latents and writes the PNG;
  peak memory  of those two processes (max RSS, from wait4);
  throughput   images/s at batch 1, 64, 1024: onnxruntime (`Decoder.decode`) against torch eager
               on the same weights, beside the arithmetic floor: the decoder's matmul FLOPs per
               image over the float32 matmul rate measured now (best of torch and numpy, 2048^2);
  bulk         `vae-generate -n 100000 --npy` as a whole process: time and peak memory (each
               run writes a new file: the previous one is deleted and synced away first).
Targets from issue 4 are printed beside each figure. Run it on a quiet machine: it is a
measurement, not a test. This script may import torch and vae_train; the runtime never does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


def matmul_flops_per_second(torch_module) -> tuple[float, str]:
    """Best float32 matmul rate of this machine now: 2048^3 * 2 FLOPs per product."""
    n = 2048
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    numpy_rate = rate(lambda: a @ b, 2 * n**3, 1.0)
    ta, tb = torch_module.from_numpy(a), torch_module.from_numpy(b)
    torch_rate = rate(lambda: torch_module.mm(ta, tb), 2 * n**3, 1.0)
    return (torch_rate, "torch.mm") if torch_rate >= numpy_rate else (numpy_rate, "numpy @")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model.pt")
    parser.add_argument(
        "--decoder", type=Path, required=True, help="decoder.onnx exported from that model.pt"
    )
    parser.add_argument("--runs", type=int, default=7, help="process runs per median")
    parser.add_argument("--bulk", type=int, default=100_000, help="samples in the bulk run")
    args = parser.parse_args()
    checkpoint, decoder_path = args.model.resolve(), args.decoder.resolve()
    generate = str(Path(sys.executable).parent / "vae-generate")
    rows: list[tuple[str, str, str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours_s, ours_mb = median_process([generate, "--onnx", str(decoder_path)], work, args.runs)
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

    import torch

    from vae_runtime import Decoder, sample_latents
    from vae_train.checkpoint import load_checkpoint

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model(checkpoint)
    decoder = Decoder.load(decoder_path, threads=threads)
    d, h = ckpt.config.latent_dim, ckpt.config.hidden_dim
    flops_per_image = 2 * (d * h + h * 784)  # the two matmuls; bias, ReLU, sigmoid are O(h + 784)
    peak, peak_source = matmul_flops_per_second(torch)
    at_1024 = (0.0, 0.0)
    for batch in (1, 64, 1024):
        z = sample_latents(batch, d, 0)
        tz = torch.from_numpy(z)
        ours = ref = 0.0
        for _ in range(3):  # alternate, best of each: a busy moment should not pick the winner
            ours = max(ours, rate(lambda z=z: decoder.decode(z), batch, 0.3))
            with torch.inference_mode():
                ref = max(ref, rate(lambda tz=tz: model.decode(tz), batch, 0.3))
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
        if batch == 1024:
            at_1024 = (ours, ref)
    # The machine's matmul rate, measured again after the decoders: the better of the two.
    peak, peak_source = max((peak, peak_source), matmul_flops_per_second(torch))
    floor = peak / flops_per_image
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
