"""`vae-train`: train the seed VAE on MNIST and write model.pt, metrics.jsonl and two figures.

Only options here; every rule lives in the library (TrainSettings, VAEConfig, Outputs), and the
exit codes come from `vae_runtime._cli.VaeCommand`. Importing this module does not import torch:
the command body sets the OpenMP thread binding first, then loads the training code.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vae_runtime import signals
from vae_runtime._cli import VaeCommand, make_app

from .data import DATA_DIR_ENV

TUNE_THREADS_ENV = "VAE_TUNE_THREADS"
# Measured with bench/train_threads.py (README, "Threads"): pinned threads that sleep after a
# short spin are as fast alone as libgomp's defaults and ~1.8x faster when two runs share the
# cores, where spinning threads wait on siblings that are not running.
THREAD_TUNING = {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "GOMP_SPINCOUNT": "10000"}

app = make_app(
    "Train the MNIST VAE; write model.pt, metrics.jsonl, samples.png, reconstructions.png."
)


def tune_threads(enabled: bool) -> None:
    """Set THREAD_TUNING for torch's OpenMP threads (one per core, pinned; idle ones sleep after
    a short spin), each variable unless the user set it. libgomp reads them once, when torch
    loads: call this first. README ("Threads") gives the measurements behind the default."""
    if enabled:
        for name, value in THREAD_TUNING.items():
            os.environ.setdefault(name, value)


@app.command(cls=VaeCommand)
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
    out: Path = typer.Option(Path("."), help="Folder the outputs go to (made if missing)."),
    resume: Path | None = typer.Option(
        None, help="Continue the run saved in this model.pt.", show_default=False
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace a model.pt already in --out (without --resume)."
    ),
    tune: bool = typer.Option(
        True,
        "--tune-threads/--no-tune-threads",
        envvar=TUNE_THREADS_ENV,
        help="Pin torch's threads one per core and let idle ones sleep after a short spin "
        "(README: Threads); without it, torch's and libgomp's defaults.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line, no epoch lines."),
) -> None:
    """Train the seed VAE (784-400-20) on MNIST."""
    tune_threads(tune)
    with signals.deferred():  # torch's native start-up is not to be cut in half
        from .data import default_cache_dir
        from .device import Progress
        from .model import VAEConfig
        from .training import TrainSettings, train

    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
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
