"""`vae-export model.pt`: the exporter's command line; it parses options and calls one function."""

from __future__ import annotations

from pathlib import Path

import typer

from vae_runtime import signals
from vae_runtime.console import VaeCommand, make_app
from vae_train.data import DATA_DIR_ENV  # torch-free, like this module

from . import DEFAULT_OPSET, MIN_OPSET

_HELP = (
    "Export a model.pt to encoder.onnx, decoder.onnx and manifest.json, after checking that "
    "onnxruntime and PyTorch agree on both graphs (batch sizes 1, 2, 64, 1000; atol 1e-5). "
    "Writes: encoder.onnx, decoder.onnx (and encoder.int8.onnx, ... for each --precision) and "
    "manifest.json in --out (default: the checkpoint's folder), and --triton-repo's files if "
    "given; all together or none, an existing file only with --force."
)
app = make_app(_HELP)


@app.command(cls=VaeCommand, help=_HELP)
def export(
    checkpoint: Path = typer.Argument(..., metavar="MODEL.PT", help="checkpoint from vae-train"),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="folder for the graphs and manifest.json, made if missing  [default: the "
        "checkpoint's folder]",
        show_default=False,
    ),
    opset: int = typer.Option(
        DEFAULT_OPSET, "--opset", help=f"ONNX opset of both graphs, {MIN_OPSET} or newer"
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        "-p",
        help="graphs to write, comma-separated: fp32,int8,fp16 (int8 and fp16 must pass the "
        "quality gate against fp32; docs/vae-export.md)",
    ),
    force: bool = typer.Option(False, "--force", "-f", help="replace existing output files"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="print nothing but errors"),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        envvar=DATA_DIR_ENV,
        help="MNIST IDX folder: its test images check the encoder and make the score "
        "reference in manifest.json  [without one: the model's own decoded samples]",
    ),
    triton_repo: Path | None = typer.Option(
        None,
        "--triton-repo",
        help="also write a Triton model repository there: <name>/config.pbtxt and "
        "<name>/1/model.onnx for each graph (made if missing; written with the other files)",
        show_default=False,
    ),
) -> None:
    """Export MODEL.PT to ONNX and verify it against PyTorch before keeping anything."""
    with signals.deferred():  # torch loads only now; its native start-up is not to be cut
        from .onnx_export import export_checkpoint

    export_checkpoint(
        checkpoint,
        out,
        opset=opset,
        precision=precision,
        force=force,
        data_dir=data_dir,
        triton_repo=triton_repo,
        log=None if quiet else print,
    )
