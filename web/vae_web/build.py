"""The builder of `vae-web`: a static site that runs the exported graphs in the browser.

`build_site(onnx_dir, out)` checks the graphs exactly like the other commands do
(`Decoder.load`/`Encoder.load`: metadata, names, shapes, the manifest's SHA-256, the pair's
latent size), then writes, as one set through `fileio.Outputs`: the page (`site/` beside this
module), `model.json` (what the page needs to know: latent size, precision, the graphs' files and
checksums, each graph's inputs and outputs as `contract.INTERFACES` declares them, the model
card), the graphs and `manifest.json` as the export wrote them, and the
three onnxruntime-web files of the pinned version with their licence. The page loads nothing
from anywhere but its own folder.

onnxruntime-web is not shipped inside the Python package (14 MB of wasm); `find_ort` looks for
the pinned files in `--ort-dir`, `$VAE_ORT_DIR`, then `node_modules` beside this module (what
`npm ci` here installs: `make web-deps`), and says how to get them when none has them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vae_runtime import __version__
from vae_runtime.contract import (
    BATCH_AXIS,
    INTERFACES,
    MANIFEST_FILE,
    PRECISIONS,
    Manifest,
    TensorDecl,
    graph_file,
)
from vae_runtime.errors import (
    DataError,
    InvalidArgumentError,
    ModelFileError,
    check_path,
)
from vae_runtime.fileio import Outputs
from vae_runtime.sampling import manifold_latents
from vae_runtime.session import Decoder, Encoder, check_pair

ORT_WEB_VERSION = "1.30.0"  # web/package.json pins the same; the page is tested with this one
# The script-tag build of the wasm backend and the one wasm binary it loads (SIMD + threads;
# it runs on one thread where the page is not cross-origin isolated).
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ORT_LICENSE = "LICENSE-onnxruntime-web.txt"  # MIT; travels with the files it covers
ORT_DIR_ENV = "VAE_ORT_DIR"
PAGE_FILES = ("index.html", "style.css", "maths.js", "app.js", "worker.js", ORT_LICENSE)
CONFIG_FILE = "model.json"
SITE_FORMAT = "mnist-vae/site"
SITE_FORMAT_VERSION = 2  # 2: each graph's entry declares its inputs and outputs (app.js checks it)
MANIFOLD_SIDE = 15  # cells per side of the 2-D latent map
SITE_DIR = Path(__file__).parent / "site"
# What `npm ci` in this folder installs (a checkout, or an editable install of one).
_CHECKOUT_ORT = Path(__file__).resolve().parent / "node_modules/onnxruntime-web/dist"
_BANNER = re.compile(rb"ONNX Runtime Web v([0-9][0-9A-Za-z.+-]*)")
_GET_ORT = (
    f"get them with `npm install onnxruntime-web@{ORT_WEB_VERSION}` (or `make web-deps` "
    f"in a checkout) and pass --ort-dir node_modules/onnxruntime-web (or set {ORT_DIR_ENV})"
)


def find_ort(ort_dir: Path | str | None = None) -> Path:
    """The folder holding the pinned onnxruntime-web files: `ort_dir` (the npm package or its
    dist/), else $VAE_ORT_DIR, else the checkout's web/vae_web/node_modules. A folder given but
    wrong is an InvalidArgumentError; none found is a DataError saying how to get them."""
    given = ort_dir if ort_dir is not None else os.environ.get(ORT_DIR_ENV) or None
    if given is None:
        if not (_CHECKOUT_ORT / ORT_FILES[0]).is_file():
            raise DataError(
                f"vae-web needs the onnxruntime-web {ORT_WEB_VERSION} files {', '.join(ORT_FILES)}"
                f", which the Python package does not ship; {_GET_ORT}"
            )
        return _check_ort(_CHECKOUT_ORT, "the checkout's web/vae_web/node_modules")
    folder = check_path("--ort-dir", given)
    if (folder / "dist" / ORT_FILES[0]).is_file():
        folder = folder / "dist"  # the npm package itself was named
    return _check_ort(folder, str(given))


def _check_ort(folder: Path, named: str) -> Path:
    for name in ORT_FILES:
        if not (folder / name).is_file():
            raise InvalidArgumentError(
                f"{named}: no {name} in {folder}; expected the onnxruntime-web "
                f"{ORT_WEB_VERSION} package or its dist/ folder ({_GET_ORT})"
            )
    with open(folder / ORT_FILES[0], "rb") as f:
        found = _BANNER.search(f.read(512))
    version = found.group(1).decode() if found else "unknown"
    if version != ORT_WEB_VERSION:
        raise InvalidArgumentError(
            f"{named}: onnxruntime-web {version} in {folder}, but the page is built and tested "
            f"with {ORT_WEB_VERSION}; {_GET_ORT}"
        )
    return folder


def interface(role: str, latent_dim: int, *, optional: bool = True) -> dict[str, Any]:
    """What the page feeds a `role` graph and reads from it, from `contract.INTERFACES`: the
    dtype, and each input and output in declared order as {name, shape}, the shape starting
    with BATCH_AXIS (the page puts its batch size there); the optional outputs (the decoder's
    logits) only with `optional`, for a graph that has them. The page names no tensor itself."""
    declared = INTERFACES[role]
    outputs = tuple(t for t in declared.outputs if optional or not t.optional)

    def tensors(decls: tuple[TensorDecl, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "shape": [BATCH_AXIS, *t.shape(latent_dim)]} for t in decls]

    return {
        "dtype": declared.dtype,
        "inputs": tensors(declared.inputs),
        "outputs": tensors(outputs),
    }


def _graph_entry(graph: Decoder | Encoder, data: bytes) -> dict[str, Any]:
    return {
        "file": graph.path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "precision": graph.precision,
        **interface(graph.role, graph.latent_dim, optional=_has_logits(graph)),
    }


def _has_logits(graph: Decoder | Encoder) -> bool:
    return isinstance(graph, Decoder) and graph.has_logits


def score_entry(
    decoder: Decoder, encoder: Encoder | None, manifest: Manifest | None
) -> dict[str, Any] | None:
    """What the draw panel's live score needs: the manifest's score reference (statistic, k,
    seed, count, mean, source and the 1,001 quantiles), or None where the page cannot score
    (no encoder, a decoder without logits, or no reference)."""
    reference = manifest.score_reference if manifest is not None else None
    if encoder is None or not decoder.has_logits or reference is None:
        return None
    return reference.to_json()


def model_card(decoder: Decoder, encoder: Encoder | None, manifest: Manifest | None) -> list[Any]:
    """The card at the top of the page: [label, text] rows from the graphs' metadata and the
    manifest (what it lacks is left out, never guessed)."""
    info = decoder.info
    training = {**info.training, **(manifest.details.get("training", {}) if manifest else {})}
    details = manifest.details if manifest else {}
    rows: list[Any] = [["latent size", str(decoder.latent_dim)]]
    model = details.get("model")
    if isinstance(model, dict) and "hidden_dim" in model:
        rows.append(["layers", f"784 - {model['hidden_dim']} - {decoder.latent_dim}"])
    quality = decoder.entry.quality if decoder.entry else {}
    numbers = {k: v for k, v in quality.items() if isinstance(v, int | float)}
    known = [k for k in ("pixel_max_abs", "pixel_mean_abs", "bce_delta") if k in numbers]
    figures = ", ".join(f"{k} {numbers[k]:.3g}" for k in known or sorted(numbers)[:3])
    rows.append(["precision", decoder.precision + (f" (vs fp32: {figures})" if figures else "")])
    if "epochs" in training:
        rows.append(["training epochs", str(training["epochs"])])
    if "test_loss" in training:
        rows.append(["test loss", f"{training['test_loss']} nats per image (BCE + KL)"])
    exported = details.get("exported") or datetime.fromtimestamp(
        decoder.path.stat().st_mtime, timezone.utc
    ).strftime("%Y-%m-%d %H:%M UTC (file date)")
    rows.append(["exported", str(exported)])
    versions = details.get("versions")
    if isinstance(versions, dict) and versions:
        rows.append(["versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))])
    elif info.producer_version:
        rows.append(["versions", f"{info.producer} {info.producer_version}"])
    checkpoint = (manifest.checkpoint if manifest else {}) or info.source
    if isinstance(checkpoint.get("sha256"), str):
        name = checkpoint.get("name") or checkpoint.get("checkpoint") or "checkpoint"
        rows.append(["checkpoint", f"{name} (SHA-256 {checkpoint['sha256'][:12]}...)"])
    rows.append(["encoder", "yes: drawing enabled" if encoder else "none: drawing hidden"])
    rows.append(["onnxruntime-web", ORT_WEB_VERSION])
    return rows


def build_site(
    onnx_dir: Path | str,
    out: Path | str,
    *,
    precision: str = "fp32",
    ort_dir: Path | str | None = None,
    force: bool = False,
) -> str:
    """Write the site for the graphs in `onnx_dir` (decoder required, encoder optional, both of
    `precision`) into the folder `out` (made if missing); a file already there is replaced only
    with `force`. Returns a one-line summary. Nothing is written unless every check passes and
    every file is staged."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    source, out = check_path("--onnx-dir", onnx_dir), check_path("--out", out)
    if not source.is_dir():
        what = "is not a folder" if source.exists() else "no such folder"
        raise ModelFileError(f"{source}: {what}; pass the folder vae-export wrote (--onnx-dir)")
    decoder_path = source / graph_file("decoder", precision)
    if not decoder_path.exists():
        flag = "" if precision == "fp32" else f" --precision {precision}"
        raise ModelFileError(
            f"{source}: no {decoder_path.name}; export it with `vae-export model.pt{flag}`"
        )
    encoder_file = source / graph_file("encoder", precision)
    encoder_path = encoder_file if encoder_file.exists() else None  # optional: no drawing
    ort = find_ort(ort_dir)

    graphs = [p for p in (decoder_path, encoder_path) if p is not None]
    manifest_path = source / MANIFEST_FILE
    copies = [
        *((SITE_DIR / name, name) for name in PAGE_FILES),
        *((ort / name, name) for name in ORT_FILES),
    ]
    names = [*(n for _, n in copies), *(g.name for g in graphs), CONFIG_FILE]
    if manifest_path.is_file():
        names.append(MANIFEST_FILE)
    targets = [out / name for name in names]
    reads = [*graphs, manifest_path, *(src for src, _ in copies)]

    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        decoder = Decoder.load(decoder_path, threads=1)
        encoder = Encoder.load(encoder_path, threads=1) if encoder_path else None
        if encoder is not None:
            check_pair(encoder, decoder)
        manifest = Manifest.beside(decoder_path)
        config: dict[str, Any] = {
            "format": SITE_FORMAT,
            "format_version": SITE_FORMAT_VERSION,
            "latent_dim": decoder.latent_dim,
            "precision": decoder.precision,
            "ort_web": ORT_WEB_VERSION,
            "built_by": f"mnist-vae {__version__}",
            "card": model_card(decoder, encoder, manifest),
            "encoder": None,
            "manifold": None,
            "score": score_entry(decoder, encoder, manifest),
        }
        for graph in (decoder, encoder):
            if graph is None:
                continue
            data = graph.path.read_bytes()
            if manifest is not None:  # the bytes shipped are the bytes checked
                manifest.verify(graph.path, data)
            outputs.write_bytes(out / graph.path.name, data)
            config[graph.role] = _graph_entry(graph, data)
        if manifest is not None:
            assert manifest.path is not None
            outputs.write_bytes(out / MANIFEST_FILE, manifest.path.read_bytes())
        if decoder.latent_dim == 2:  # the runtime's own lattice: the page decodes it as a map
            lattice = manifold_latents(MANIFOLD_SIDE, MANIFOLD_SIDE)
            config["manifold"] = {"side": MANIFOLD_SIDE, "z": lattice.ravel().tolist()}
        for src, name in copies:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, outputs.open(out / name), 1 << 20)
        text = json.dumps(config, indent=1, allow_nan=False) + "\n"
        outputs.write_bytes(out / CONFIG_FILE, text.encode())
        outputs.commit()
    size = sum((out / name).stat().st_size for name in names)
    parts = f"{decoder.precision} decoder" + (" + encoder" if encoder else " (no encoder)")
    return (
        f"{out}: a site of {len(names)} files ({size / 1e6:.1f} MB) for the {parts} of latent "
        f"size {decoder.latent_dim}; serve it with: python -m http.server -d {out}"
    )
