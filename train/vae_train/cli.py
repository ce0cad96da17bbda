"""`vae-train` (train the seed VAE; write model.pt, metrics.jsonl and four figures) and `vae-eval`
(the test-set ELBO, the importance-weighted bound, active units; eval.json and a chart).

Only options here; every rule lives in the library (TrainSettings, VAEConfig, Outputs), and the
exit codes come from `vae_runtime.console.VaeCommand`. Importing this module does not import torch:
the command body sets the OpenMP thread binding first, then loads the training code.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vae_runtime import signals
from vae_runtime.console import VaeCommand, make_app
from vae_runtime.errors import check_int

from .data import DATA_DIR_ENV

# vae-eval's defaults: a quick estimate. The full evaluation, the literature's (all test images,
# k = 5000: evaluate.EvalSettings's defaults), takes ~12 minutes on 2 cores; this, seconds.
DEFAULT_SAMPLES = 500
DEFAULT_COUNT = 2000
LITERATURE_SAMPLES = 5000

TUNE_THREADS_ENV = "VAE_TUNE_THREADS"
# Measured with bench/train_threads.py (docs/vae-train.md, "Threads"): pinned threads that
# sleep after a short spin are as fast alone as libgomp's defaults and ~1.8x faster when two
# runs share the cores, where spinning threads wait on siblings that are not running.
THREAD_TUNING = {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "GOMP_SPINCOUNT": "10000"}

_TRAIN_HELP = (
    "Train the MNIST VAE. Writes: model.pt, metrics.jsonl, samples.png, reconstructions.png, "
    "loss.png and progress.gif in --out (the current folder by default), replaced together "
    "after every epoch; files already there only with --force (or when --resume continues the "
    "model.pt there)."
)
_EVAL_HELP = (
    "Evaluate a model.pt on the MNIST test set: the ELBO and the importance-weighted bound on "
    "log p(x) (Burda et al.), nats per image with Monte-Carlo standard errors, the KL and "
    "activity of each latent dimension, the reconstruction error. By default a quick estimate "
    f"(the first {DEFAULT_COUNT:,} test images, k = {DEFAULT_SAMPLES} importance samples; well "
    f"under a minute on 2 cores); the literature's figure is --count 0 -k {LITERATURE_SAMPLES} "
    "(all 10,000 images; minutes). Writes: eval.json beside the model (or --out) and its chart "
    "eval_kl.png beside the JSON (not with --no-chart); an existing file only with --force."
)
app = make_app(_TRAIN_HELP)
eval_app = make_app(_EVAL_HELP)


def set_threads(threads: int | None) -> None:
    """`--threads`: torch's intra-op threads (None: one per core). Set in the environment too,
    so that libgomp's pool has that size from the moment torch loads."""
    if threads is None:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    check_int("threads", threads, 1, cores or 1)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    with signals.deferred():
        import torch

    torch.set_num_threads(threads)


def tune_threads(enabled: bool) -> None:
    """Set THREAD_TUNING for torch's OpenMP threads (one per core, pinned; idle ones sleep after
    a short spin), each variable unless the user set it. libgomp reads them once, when torch
    loads: call this first. docs/vae-train.md ("Threads") gives the measurements behind the
    default."""
    if enabled:
        for name, value in THREAD_TUNING.items():
            os.environ.setdefault(name, value)


@app.command(cls=VaeCommand, help=_TRAIN_HELP)
def train_command(
    epochs: int = typer.Option(10, help="Total epochs (a resumed run trains up to this)."),
    batch_size: int = typer.Option(128, help="Images per optimizer step."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    seed: int = typer.Option(1, help="Seed of weights, shuffling, noise and samples.png."),
    hidden_dim: int = typer.Option(400, help="Hidden layer width."),
    latent_dim: int = typer.Option(20, help="Latent size."),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N], mps."),
    data_dir: Path | None = typer.Option(
        None,
        envvar=DATA_DIR_ENV,
        help="Folder with MNIST IDX files (gzip or raw), read as is [default: the cache "
        "~/.cache/mnist-vae/mnist, downloaded into on first use].",
        show_default=False,
    ),
    out: Path = typer.Option(
        Path("."), "--out", "-o", help="Folder the outputs go to (made if missing)."
    ),
    resume: Path | None = typer.Option(
        None, help="Continue the run saved in this model.pt.", show_default=False
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace output files already in --out (a new run)."
    ),
    tune: bool = typer.Option(
        True,
        "--tune-threads/--no-tune-threads",
        envvar=TUNE_THREADS_ENV,
        help="Pin torch's threads one per core and let idle ones sleep after a short spin "
        "(docs/vae-train.md: Threads); without it, torch's and libgomp's defaults.",
    ),
    precision: str = typer.Option(
        "fp32",
        help="fp32 (bit-reproducible) or bf16: matmuls in bfloat16 (autocast), weights, Adam's "
        "state, loss and checkpoint in float32. Against fp32, whose matmuls run in oneDNN too, "
        "it buys 1.0x-1.37x per epoch on the AVX512-BF16 AMD EPYCs measured, with the CPU and "
        "its load; bf16 matmuls alone allow 1.31x-1.41x (docs/vae-train.md: Speed). Refused on "
        "CPUs without bf16 arithmetic and on GPUs (launch-bound: no gain).",
    ),
    binarize: bool = typer.Option(
        False,
        "--binarize",
        help="Dynamic binarisation: each epoch's pixels drawn as Bernoulli(intensity) from the "
        "run's generator; the test set binarised once, from the seed (as vae-eval --binarize).",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print nothing but errors: no progress, no epoch lines."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="torch's threads  [default: one per core]",
        show_default=False,
    ),
) -> None:
    """Train the seed VAE (784-400-20) on MNIST."""
    tune_threads(tune)
    set_threads(threads)
    with signals.deferred():  # torch's native start-up is not to be cut in half
        from .data import default_cache_dir
        from .device import Progress
        from .model import VAEConfig
        from .training import TrainSettings, train

    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        compute_dtype=precision,
        binarize=binarize,
    )
    train(
        settings,
        VAEConfig(hidden_dim=hidden_dim, latent_dim=latent_dim),
        out_dir=out,
        data_dir=data_dir,
        cache_dir=default_cache_dir(os.environ.get("XDG_CACHE_HOME")),
        resume=resume,
        force=force,
        log=None if quiet else print,
        progress=Progress(enabled=not quiet),
    )


@eval_app.command(cls=VaeCommand, help=_EVAL_HELP)
def eval_command(
    model: Path = typer.Argument(..., help="model.pt from vae-train.", show_default=False),
    samples: int = typer.Option(
        DEFAULT_SAMPLES,
        "--samples",
        "-k",
        help=f"Importance samples per image (1..1,000,000; {LITERATURE_SAMPLES} is the "
        "literature's figure).",
    ),
    count: int | None = typer.Option(
        None,
        "--count",
        "-n",
        help=f"Evaluate the first N test images; 0: all of them  [default: {DEFAULT_COUNT:,}, "
        "or all when the set holds fewer]",
        show_default=False,
    ),
    seed: int = typer.Option(0, help="Seed of the z draws and of --binarize's binarisation."),
    binarize: bool = typer.Option(
        False,
        "--binarize",
        help="Targets binarised once, from the seed (statically binarised MNIST, as the "
        "literature reports its bounds); default: the greyscale intensities.",
    ),
    device: str = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda[:N], mps."),
    data_dir: Path | None = typer.Option(
        None,
        envvar=DATA_DIR_ENV,
        help="Folder with MNIST IDX files, as for vae-train [default: the download cache].",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="The JSON to write [default: eval.json beside the model]; the chart goes beside it "
        "(eval.json -> eval_kl.png).",
        show_default=False,
    ),
    chart: bool = typer.Option(True, "--chart/--no-chart", help="Draw the per-dimension KL chart."),
    tune: bool = typer.Option(
        True,
        "--tune-threads/--no-tune-threads",
        envvar=TUNE_THREADS_ENV,
        help="As for vae-train (docs/vae-train.md: Threads).",
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace an eval.json or chart that already exists."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Print nothing but errors: no progress, no table."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="torch's threads  [default: one per core]",
        show_default=False,
    ),
) -> None:
    """Evaluate a model.pt: ELBO and IWAE bound on the test set, per-dimension KL, eval.json."""
    tune_threads(tune)
    set_threads(threads)
    with signals.deferred():
        from .data import default_cache_dir
        from .device import Progress
        from .evaluate import EvalSettings, run_eval

    run_eval(
        model,
        EvalSettings(
            samples=samples,
            count=DEFAULT_COUNT if count is None else count or None,
            seed=seed,
            device=device,
            binarize=binarize,
            up_to=count is None,
        ),
        out=out,
        force=force,
        chart=chart,
        data_dir=data_dir,
        cache_dir=default_cache_dir(os.environ.get("XDG_CACHE_HOME")),
        log=None if quiet else print,
        progress=Progress(enabled=not quiet),
    )
