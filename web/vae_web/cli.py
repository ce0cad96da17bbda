"""`vae-web`'s command line: it parses options and calls `build.build_site`."""

from __future__ import annotations

from pathlib import Path

import typer

from vae_runtime.console import VaeCommand, make_app
from vae_runtime.contract import PRECISIONS

from .build import ORT_DIR_ENV, ORT_WEB_VERSION, build_site

_HELP = (
    "Write a static web page that runs the exported graphs in the browser with onnxruntime-web "
    "(no server-side Python): a prior grid, one slider per latent dimension, drawing a digit "
    "(with an encoder), interpolation, and the map of a 2-D latent. Serve the folder with any "
    "static file server (python -m http.server -d SITE); it loads nothing from the network. "
    "Writes: the folder site (or --out): index.html, its scripts and style, model.json, the "
    "graphs, manifest.json and onnxruntime-web's files; a file already there only with --force."
)

app = make_app(_HELP)


@app.command(cls=VaeCommand, help=_HELP)
def web(
    onnx_dir: Path = typer.Option(
        ..., "--onnx-dir", help="Folder vae-export wrote (decoder.onnx, ...).", show_default=False
    ),
    out: Path = typer.Option(Path("site"), "--out", "-o", help="Folder of the site to write."),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        metavar="|".join(PRECISIONS),
        help="Which exported graphs to ship (int8: about a quarter of the download).",
    ),
    ort_dir: Path | None = typer.Option(
        None,
        "--ort-dir",
        help=f"The onnxruntime-web {ORT_WEB_VERSION} npm package (or its dist/) to copy from "
        f"(default: ${ORT_DIR_ENV}, else the checkout's web/vae_web/node_modules).",
        show_default=False,
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace files already in the site's folder."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Write the static site."""
    summary = build_site(onnx_dir, out, precision=precision, ort_dir=ort_dir, force=force)
    if not quiet:
        print(summary)
