"""`vae-train`: train the seed VAE on MNIST and write model.pt, metrics.jsonl and two figures."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vae_runtime._cli import VaeCommand, make_app

INSTALL_HINT = "pip install torch==2.13.0 'mnist-vae[train]'"
_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")

app = make_app(
    "Train the MNIST VAE; write model.pt, metrics.jsonl, samples.png, reconstructions.png."
)


def _check_device(value: str) -> str:
    head, _, index = value.partition(":")
    if value in ("auto", "cpu", "cuda", "mps") or (head == "cuda" and index.isdigit()):
        return value
    raise typer.BadParameter(f"{value!r} is not one of {', '.join(_DEVICES)}")


def _check_lr(value: float) -> float:
    if not 0 < value < float("inf"):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


@app.command(cls=VaeCommand)
def train_command(
    epochs: int = typer.Option(10, min=1, help="Total epochs (a resumed run trains up to this)."),
    batch_size: int = typer.Option(128, min=1, help="Images per optimizer step."),
    lr: float = typer.Option(1e-3, callback=_check_lr, help="Adam learning rate (> 0)."),
    seed: int = typer.Option(1, min=0, help="Seed of weights, shuffling, noise and samples.png."),
    hidden_dim: int = typer.Option(400, min=1, help="Hidden layer width."),
    latent_dim: int = typer.Option(20, min=1, help="Latent size."),
    device: str = typer.Option(
        "auto", callback=_check_device, help="auto (cuda, then mps, then cpu), cpu, cuda[:N], mps."
    ),
    data_dir: Path | None = typer.Option(
        None,
        file_okay=False,
        help="Folder with MNIST IDX files (gzip or raw), read as is [default: $VAE_DATA_DIR, "
        "else ~/.cache/mnist-vae/mnist, downloaded on first use].",
        show_default=False,
    ),
    out: Path = typer.Option(Path("."), file_okay=False, help="Folder the outputs go to."),
    resume: Path | None = typer.Option(
        None, dir_okay=False, help="Continue the run saved in this model.pt.", show_default=False
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no epoch lines."),
) -> None:
    """Train the seed VAE (784-400-20) on MNIST."""
    from .model import VAEConfig
    from .train import TrainingInterrupted, TrainSettings, train

    try:
        train(
            TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device),
            VAEConfig(hidden_dim=hidden_dim, latent_dim=latent_dim),
            out_dir=out,
            data_dir=data_dir,
            resume=resume,
            quiet=quiet,
        )
    except TrainingInterrupted as exc:
        print(f"vae-train: {exc}", file=sys.stderr)
        raise typer.Exit(130) from None


def main() -> None:
    """Console entry point: refuses with one line when PyTorch is missing, else runs the app."""
    try:
        import torch  # noqa: F401  (only to learn whether the training extra is installed)
    except ImportError:
        print(
            f"vae-train: error: PyTorch is not installed; install the training extra: "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(1)
    app(prog_name="vae-train")


if __name__ == "__main__":
    main()
