"""The runtime's commands: vae-generate, vae-interpolate, vae-reconstruct, vae-score (no torch).

Each command only declares its options and calls one function of `tasks`; errors become one line
on stderr through `VaeCommand`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from . import tasks
from .console import VaeCommand, make_app
from .images import MAX_GRID_PIXELS
from .inputs import CONVERSION
from .session import DEFAULT_BATCH_SIZE

_CAP = f"Grids above {MAX_GRID_PIXELS:,} pixels are refused."
_PROVIDERS_HELP = (
    "onnxruntime execution provider; repeat for a preference list (default: CPUExecutionProvider)."
)
_THREADS_HELP = "Threads per graph run (default: one per available core)."


def _provider_option() -> Any:
    return typer.Option(
        [], "--provider", help=_PROVIDERS_HELP, show_default=False, metavar="<name>"
    )


def _force_option() -> Any:
    return typer.Option(False, "--force", "-f", help="Replace output files that already exist.")


def _quiet_option() -> Any:
    return typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")


def _say(quiet: bool, line: str) -> None:
    if not quiet:
        print(line)


_GENERATE_HELP = (
    "Decode samples from the prior with decoder.onnx: a PNG grid, and on request raw .npy arrays "
    "or one PNG per image. Same seed, same bytes. " + _CAP + " Writes: samples.png (or --out; "
    "not with --no-grid), --npy FILE and --images-dir's sample_NNNNN.png files if given; an "
    "existing file only with --force."
)


generate_app = make_app(_GENERATE_HELP)


@generate_app.command(cls=VaeCommand, help=_GENERATE_HELP)
def generate(
    decoder: Path = typer.Option(
        ..., "--onnx", "--decoder", help="decoder.onnx from vae-export.", show_default=False
    ),
    rows: int = typer.Option(5, "--rows", help="Grid rows."),
    cols: int = typer.Option(5, "--cols", help="Grid columns."),
    seed: int = typer.Option(0, "--seed", help="Seed of numpy's default_rng for the latents."),
    temperature: float = typer.Option(
        1.0, "--temperature", "-t", help="Scale of the prior N(0, t^2 I); 0 decodes the mean."
    ),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o", help="Grid PNG to write."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Write the grid PNG at --out."),
    count: int | None = typer.Option(
        None,
        "--count",
        "-n",
        help="Samples to decode (default rows x cols); the grid shows the first rows x cols. "
        "For bulk output with --npy or --images-dir.",
        show_default=False,
    ),
    npy: Path | None = typer.Option(
        None,
        "--npy",
        help="Also write all samples as float32 (N, 1, 28, 28) in [0, 1] to this .npy, "
        "streamed batch by batch.",
        show_default=False,
    ),
    images_dir: Path | None = typer.Option(
        None,
        "--images-dir",
        help="Also write each sample as its own PNG (sample_00000.png, ...) in this folder.",
        show_default=False,
    ),
    manifold: bool = typer.Option(
        False,
        "--manifold",
        help="Latent size 2 only: decode a rows x cols lattice over the latent plane at the "
        "prior's quantiles instead of random samples (x rises rightwards, y upwards).",
    ),
    scale: int = typer.Option(1, "--scale", help="Upscale every pixel by this integer factor."),
    padding: int = typer.Option(2, "--padding", help="Black pixels between and around images."),
    batch_size: int = typer.Option(DEFAULT_BATCH_SIZE, "--batch-size", help="Rows per run."),
    provider: list[str] = _provider_option(),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP, show_default=False),
    force: bool = _force_option(),
    quiet: bool = _quiet_option(),
) -> None:
    """Decode samples from the prior into a grid PNG (and .npy / per-image files)."""
    _say(
        quiet,
        tasks.write_samples(
            decoder,
            out if grid else None,
            rows=rows,
            cols=cols,
            seed=seed,
            temperature=temperature,
            count=count,
            scale=scale,
            padding=padding,
            npy=npy,
            images_dir=images_dir,
            manifold=manifold,
            providers=provider,
            threads=threads,
            batch_size=batch_size,
            force=force,
        ),
    )


_INTERPOLATE_HELP = (
    "Walk the latent space between two prior samples (two seeds) or, with --encoder, between two "
    "input images; write the path as a grid PNG and an animated GIF (there and back). "
    + CONVERSION
    + " "
    + _CAP
    + " Writes: interpolation.png (or --out), interpolation.gif (or --gif; not with --no-gif), "
    "--npy FILE if given; an existing file only with --force."
)


interpolate_app = make_app(_INTERPOLATE_HELP)


@interpolate_app.command(cls=VaeCommand, help=_INTERPOLATE_HELP)
def interpolate(
    inputs: list[Path] | None = typer.Argument(
        None,
        help="With --encoder: two image files (or one IDX file: its first two images).",
        metavar="FILE",
        show_default=False,
    ),
    decoder: Path = typer.Option(
        ..., "--onnx", "--decoder", help="decoder.onnx from vae-export.", show_default=False
    ),
    encoder: Path | None = typer.Option(
        None,
        "--encoder",
        help="encoder.onnx, to start and end at input images.",
        show_default=False,
    ),
    from_seed: int = typer.Option(0, "--from-seed", help="Seed of the starting latent."),
    to_seed: int = typer.Option(1, "--to-seed", help="Seed of the final latent."),
    temperature: float = typer.Option(
        1.0, "--temperature", "-t", help="Scale of the prior for the two seeded latents."
    ),
    steps: int = typer.Option(10, "--steps", help="Images on the path, both ends included."),
    method: str = typer.Option(
        "slerp",
        "--method",
        metavar="slerp|lerp",
        help="slerp (great circle, keeps Gaussian-typical norms) or lerp (straight line).",
    ),
    out: Path = typer.Option(Path("interpolation.png"), "--out", "-o", help="Grid PNG."),
    gif: Path = typer.Option(Path("interpolation.gif"), "--gif", help="Animated GIF."),
    no_gif: bool = typer.Option(False, "--no-gif", help="Do not write the GIF."),
    cols: int | None = typer.Option(
        None, "--cols", help="Grid columns (default: steps, one row).", show_default=False
    ),
    scale: int = typer.Option(1, "--scale", help="Upscale factor of the grid PNG."),
    padding: int = typer.Option(2, "--padding", help="Black pixels between and around images."),
    gif_scale: int = typer.Option(4, "--gif-scale", help="Upscale factor of the GIF frames."),
    frame_ms: int = typer.Option(100, "--frame-ms", help="Milliseconds per GIF frame."),
    npy: Path | None = typer.Option(
        None,
        "--npy",
        help="Also write the path's images, float32 (steps, 1, 28, 28).",
        show_default=False,
    ),
    provider: list[str] = _provider_option(),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP, show_default=False),
    force: bool = _force_option(),
    quiet: bool = _quiet_option(),
) -> None:
    """Interpolate between two latents and write the path as a grid PNG and a GIF."""
    _say(
        quiet,
        tasks.write_interpolation(
            decoder,
            out,
            None if no_gif else gif,
            encoder_path=encoder,
            inputs=inputs or [],
            from_seed=from_seed,
            to_seed=to_seed,
            temperature=temperature,
            steps=steps,
            method=method,
            cols=cols,
            scale=scale,
            padding=padding,
            gif_scale=gif_scale,
            frame_ms=frame_ms,
            npy=npy,
            providers=provider,
            threads=threads,
            force=force,
        ),
    )


_RECONSTRUCT_HELP = (
    "Encode input images and decode them again: a grid PNG in which each row of originals is "
    "followed by the row of their reconstructions. " + CONVERSION + " " + _CAP + " Writes: "
    "reconstructions.png (or --out), --npy FILE if given; an existing file only with --force."
)


reconstruct_app = make_app(_RECONSTRUCT_HELP)


@reconstruct_app.command(cls=VaeCommand, help=_RECONSTRUCT_HELP)
def reconstruct(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Image files (PNG, JPEG, ...) and/or IDX files.",
        show_default=False,
        metavar="FILE",
    ),
    encoder: Path = typer.Option(
        ..., "--encoder", help="encoder.onnx from vae-export.", show_default=False
    ),
    decoder: Path = typer.Option(
        ..., "--decoder", "--onnx", help="decoder.onnx from vae-export.", show_default=False
    ),
    count: int = typer.Option(
        10, "--count", "-n", help="Use at most this many images, in input order."
    ),
    cols: int = typer.Option(10, "--cols", help="Images per row."),
    out: Path = typer.Option(Path("reconstructions.png"), "--out", "-o", help="Grid PNG to write."),
    scale: int = typer.Option(1, "--scale", help="Upscale every pixel by this integer factor."),
    padding: int = typer.Option(2, "--padding", help="Black pixels between and around images."),
    npy: Path | None = typer.Option(
        None,
        "--npy",
        help="Also write the reconstructions, float32 (N, 1, 28, 28).",
        show_default=False,
    ),
    provider: list[str] = _provider_option(),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP, show_default=False),
    force: bool = _force_option(),
    quiet: bool = _quiet_option(),
) -> None:
    """Reconstruct input images through encoder.onnx and decoder.onnx."""
    _say(
        quiet,
        tasks.write_reconstructions(
            encoder,
            decoder,
            inputs,
            out,
            count=count,
            cols=cols,
            scale=scale,
            padding=padding,
            npy=npy,
            providers=provider,
            threads=threads,
            force=force,
        ),
    )


_SCORE_HELP = (
    "Score how typical each input image is for the model, torch-free: per image the evidence "
    "lower bound, the importance-weighted bound with k samples and the reconstruction BCE (nats; "
    "higher = more typical), and its percentile against the test-set reference in the manifest. "
    "Image j's draws come from (--seed, j). Inputs: image files, folders of them, .npy arrays, "
    "IDX files. " + CONVERSION + " Prints the count, the means, the lowest five and how many "
    "fall under --threshold. Exit 3 (--below-threshold-exit) when any does. See docs/vae-score.md."
    " Writes: scores.csv (or --out): source, index, elbo, iwae, bce, percentile; an existing "
    "file only with --force."
)


score_app = make_app(_SCORE_HELP)


@score_app.command(cls=VaeCommand, help=_SCORE_HELP)
def score(
    inputs: list[Path] = typer.Argument(
        ...,
        help="Image files, folders of them, .npy arrays of images, IDX files.",
        show_default=False,
        metavar="IMAGES",
    ),
    onnx_dir: Path = typer.Option(
        ..., "--onnx-dir", help="The folder vae-export wrote.", show_default=False
    ),
    k: int = typer.Option(64, "-k", "--samples", help="Importance samples per image."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draws (image j: (seed, j))."),
    precision: str = typer.Option(
        "fp32", "--precision", metavar="fp32|int8|fp16", help="Which exported graphs to use."
    ),
    out: Path = typer.Option(Path("scores.csv"), "--out", "-o", help="CSV file to write."),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        metavar="NATS|pN",
        help="A bound in nats (--threshold=-150) or a percentile of the reference (p0.1); the "
        "summary counts the images under it.",
        show_default=False,
    ),
    below_threshold_exit: int | None = typer.Option(
        None,
        "--below-threshold-exit",
        metavar="CODE",
        help="Exit with CODE (3, the table's code, or up to 125) when any image scores under "
        "--threshold; the CSV is written all the same.",
        show_default=False,
    ),
    count: int | None = typer.Option(
        None, "--count", "-n", help="Score only the first N images.", show_default=False
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help="Decoder rows per run (k x images; default 8192): the bound on memory.",
        show_default=False,
    ),
    provider: list[str] = _provider_option(),
    threads: int | None = typer.Option(None, "--threads", help=_THREADS_HELP, show_default=False),
    force: bool = _force_option(),
    quiet: bool = _quiet_option(),
) -> None:
    """Score images: the ELBO, IWAE bound, BCE and percentile of each, into a CSV."""
    run = tasks.write_scores(
        inputs,
        onnx_dir,
        out,
        k=k,
        seed=seed,
        precision=precision,
        threshold=threshold,
        below_threshold_exit=below_threshold_exit,
        count=count,
        batch_size=batch_size,
        providers=provider,
        threads=threads,
        force=force,
    )
    _say(quiet, run.summary)
    run.raise_if_under()
