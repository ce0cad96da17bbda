"""What each runtime command does, as one library function each: check every argument and every
output path first (cheap: before a graph is loaded or memory allocated), then load, compute, and
write all outputs as one set (`fileio.Outputs`).

The rules themselves live in the functions that need them (`grid_size`, `check_sampling`,
`check_batch_size`, ...); these functions call them early, they do not restate them.
`write_samples` streams: latents are drawn in batches (`iter_latents`, equal to
`sample_latents`), decoded batch by batch and appended to the .npy file, so 100,000 samples need
no more memory than one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .contract import IMAGE_SHAPE, MANIFEST_FILE
from .errors import InvalidArgumentError, check_int
from .fileio import Outputs
from .images import (
    MAX_GRID_PIXELS,
    check_frame_ms,
    check_scale,
    gif_bytes,
    grid_rows,
    grid_size,
    image_file_names,
    png_bytes,
    tile,
    to_uint8,
    upscale,
)
from .inputs import check_limit, load_inputs
from .npy import NpyWriter
from .sampling import (
    check_batch_size,
    check_interpolation,
    check_sampling,
    interpolate,
    manifold_latents,
    sample_latents,
)
from .score_task import write_scores as write_scores  # vae-score's work, split for size
from .session import DEFAULT_BATCH_SIZE, Decoder, Encoder, check_pair, session_options

MAX_IMAGE_FILES = 100_000  # --images-dir: one PNG per image, each staged, then renamed
_SIDE = IMAGE_SHAPE[1]


def _graph_reads(*graphs: Path | None) -> list[Path]:
    """The files loading these graphs reads: each graph and the manifest beside it."""
    given = [Path(g) for g in graphs if g is not None]
    return [*given, *(g.parent / MANIFEST_FILE for g in given)]


def write_samples(
    decoder_path: Path,
    out: Path | None = Path("samples.png"),
    *,
    rows: int = 5,
    cols: int = 5,
    seed: int = 0,
    temperature: float = 1.0,
    count: int | None = None,
    scale: int = 1,
    padding: int = 2,
    npy: Path | None = None,
    images_dir: Path | None = None,
    manifold: bool = False,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    force: bool = False,
) -> str:
    """Decode `count` samples (default rows * cols) from `seed` at `temperature`; write the first
    rows * cols as a grid PNG at `out` (None: no grid), all of them to `npy` (float32
    (count, 1, 28, 28)) and/or one PNG each into `images_dir`. With `manifold`, decode the
    rows x cols lattice of `manifold_latents` instead (latent size 2 only). An existing output
    is replaced only with `force`. Returns a summary."""
    grid_size(rows, cols, _SIDE, _SIDE, padding, scale)  # the grid's rules and pixel cap
    if manifold and count is not None:
        raise InvalidArgumentError("--count does not apply to --manifold (rows x cols decide)")
    n = rows * cols if count is None else count
    check_sampling(n, seed, temperature)
    check_int("count", n, 1)
    if out is not None and npy is None and images_dir is None and n > rows * cols:
        raise InvalidArgumentError(
            f"--count {n:,} decodes more images than the {rows}x{cols} grid shows; keep them "
            "with --npy or --images-dir, or drop --count"
        )
    if images_dir is not None:
        check_int("count with --images-dir", n, 1, MAX_IMAGE_FILES)
    check_batch_size(batch_size)
    session_options(threads)
    if out is None and npy is None and images_dir is None:
        raise InvalidArgumentError("nothing to write: give a grid --out, --npy or --images-dir")
    names = image_file_names("sample", n) if images_dir is not None else []
    files = [Path(images_dir) / name for name in names] if images_dir is not None else []
    targets = [p for p in (npy, *files, out) if p is not None]

    with Outputs(
        targets, reads=_graph_reads(decoder_path), force=force, create_dirs=True
    ) as outputs:
        decoder = Decoder.load(decoder_path, providers=providers, threads=threads)
        if manifold:
            if decoder.latent_dim != 2:
                raise InvalidArgumentError(
                    f"--manifold needs a latent size of 2, {decoder.path} has {decoder.latent_dim}"
                )
            lattice = manifold_latents(rows, cols, temperature)  # (rows * cols, 2)
            batches = decoder.iter_decode(_chunks(lattice, batch_size))
        else:
            batches = decoder.iter_samples(n, seed, temperature, batch_size)
        shown = min(n, rows * cols) if out is not None else 0
        cells: list[np.ndarray] = []  # uint8 (B, 28, 28) pieces of the first `shown` images
        with (
            NpyWriter(npy, (n, *IMAGE_SHAPE), outputs=outputs)
            if npy is not None
            else _Nothing() as writer
        ):
            done = 0
            for batch in batches:  # (B, 1, 28, 28) float32
                writer.write(batch)
                pixels = to_uint8(batch)
                for offset, image in enumerate(upscale(pixels, scale) if files else ()):
                    outputs.write_bytes(files[done + offset], png_bytes(image))
                if done < shown:
                    cells.append(pixels[: shown - done])
                done += batch.shape[0]
        if out is not None:
            outputs.write_bytes(
                out, png_bytes(tile(np.concatenate(cells), rows, cols, padding, scale))
            )
        outputs.commit()
    what = "manifold" if manifold else f"seed {seed}, temperature {temperature:g}"
    what += _precisions(decoder)
    written = [str(p) for p in (out, npy) if p is not None]
    if images_dir is not None:
        written.append(f"{n} files in {images_dir}")
    return f"{n} images ({what}) -> {', '.join(written)}"


class _Nothing:
    """A stand-in writer for when no .npy is asked for."""

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, batch: np.ndarray) -> None:
        return None


def write_interpolation(
    decoder_path: Path,
    out: Path | None = Path("interpolation.png"),
    gif: Path | None = Path("interpolation.gif"),
    *,
    encoder_path: Path | None = None,
    inputs: Sequence[Path] = (),
    from_seed: int = 0,
    to_seed: int = 1,
    temperature: float = 1.0,
    steps: int = 10,
    method: str = "slerp",
    cols: int | None = None,
    scale: int = 1,
    padding: int = 2,
    gif_scale: int = 4,
    frame_ms: int = 100,
    npy: Path | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    force: bool = False,
) -> str:
    """Walk `steps` latents from one end to the other and decode them. The ends are two prior
    samples (`from_seed`, `to_seed`, at `temperature`), or, with `encoder_path`, the latent means
    of the first two images in `inputs`. Writes a grid PNG (`cols` per row, default all in one
    row), an animated GIF that goes there and back, and/or the float32 images as .npy. An
    existing output is replaced only with `force`."""
    check_interpolation(steps, method)
    cols = steps if cols is None else cols
    grid_size(grid_rows(steps, cols), cols, _SIDE, _SIDE, padding, scale)
    if gif is not None:
        check_scale(gif_scale, "gif scale")
        frames_px = (2 * steps - 2) * (_SIDE * gif_scale) ** 2
        if frames_px > MAX_GRID_PIXELS:
            raise InvalidArgumentError(
                f"{steps} steps at GIF scale {gif_scale} is {frames_px:,} pixels of frames, "
                f"above the cap of {MAX_GRID_PIXELS:,}; use fewer --steps or a smaller --gif-scale"
            )
        check_frame_ms(frame_ms)
    for seed in (from_seed, to_seed):
        check_sampling(2, seed, temperature)
    if encoder_path is None and inputs:
        raise InvalidArgumentError("input images need --encoder to be placed in latent space")
    if encoder_path is not None and not inputs:
        raise InvalidArgumentError("--encoder needs two input images (or one IDX file)")
    session_options(threads)
    if out is None and gif is None and npy is None:
        raise InvalidArgumentError("nothing to write: give --out, --gif or --npy")
    targets = [p for p in (npy, gif, out) if p is not None]
    reads = [*_graph_reads(decoder_path, encoder_path), *map(Path, inputs)]

    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        decoder = Decoder.load(decoder_path, providers=providers, threads=threads)
        if encoder_path is not None:
            encoder = Encoder.load(encoder_path, providers=providers, threads=threads)
            check_pair(encoder, decoder)
            images = load_inputs(inputs, limit=2)
            if images.shape[0] < 2:
                raise InvalidArgumentError(
                    f"two input images needed, the inputs hold {len(images)}"
                )
            ends, _ = encoder.encode(images)  # (2, d) latent means
            what = f"{inputs[0]} -> {inputs[1]}" if len(inputs) > 1 else f"first two of {inputs[0]}"
        else:
            d = decoder.latent_dim
            ends = np.concatenate(
                [sample_latents(1, d, s, temperature) for s in (from_seed, to_seed)]
            )
            what = f"seed {from_seed} -> seed {to_seed}"
        path = decoder.decode(interpolate(ends[0], ends[1], steps, method))  # (steps, 1, 28, 28)
        pixels = to_uint8(path)  # (steps, 28, 28)
        if npy is not None:
            with NpyWriter(npy, path.shape, outputs=outputs) as writer:
                writer.write(path)
        if gif is not None:
            there_and_back = np.concatenate([pixels, pixels[-2:0:-1]])  # ends shown once per loop
            outputs.write_bytes(
                gif, gif_bytes(upscale(there_and_back, gif_scale), frame_ms=frame_ms)
            )
        if out is not None:
            grid = tile(pixels, grid_rows(steps, cols), cols, padding, scale)
            outputs.write_bytes(out, png_bytes(grid))
        outputs.commit()
    written = ", ".join(str(p) for p in (out, gif, npy) if p is not None)
    graphs = (decoder,) if encoder_path is None else (encoder, decoder)
    return f"{steps} steps ({method}, {what}{_precisions(*graphs)}) -> {written}"


def write_reconstructions(
    encoder_path: Path,
    decoder_path: Path,
    inputs: Sequence[Path],
    out: Path = Path("reconstructions.png"),
    *,
    count: int = 10,
    cols: int = 10,
    scale: int = 1,
    padding: int = 2,
    npy: Path | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    force: bool = False,
) -> str:
    """Encode up to `count` images from `inputs` (image or IDX files, see inputs.CONVERSION),
    decode their latent means, and write a grid PNG: each row of `cols` originals is followed
    by the row of their reconstructions. `npy`: the reconstructions, float32 (N, 1, 28, 28).
    An existing output is replaced only with `force`."""
    check_limit(count)
    grid_size(2 * grid_rows(count, cols), cols, _SIDE, _SIDE, padding, scale)
    if not inputs:
        raise InvalidArgumentError("no input images given")
    session_options(threads)
    targets = [p for p in (npy, out) if p is not None]
    reads = [*_graph_reads(decoder_path, encoder_path), *map(Path, inputs)]

    with Outputs(targets, reads=reads, force=force, create_dirs=True) as outputs:
        encoder = Encoder.load(encoder_path, providers=providers, threads=threads)
        decoder = Decoder.load(decoder_path, providers=providers, threads=threads)
        check_pair(encoder, decoder)
        originals = load_inputs(inputs, limit=count)  # uint8 (N, 28, 28)
        mu, _ = encoder.encode(originals)
        recon = decoder.decode(mu)  # (N, 1, 28, 28)
        n = originals.shape[0]
        used_cols = min(cols, n)
        blocks = grid_rows(n, used_cols)
        cells = np.zeros((blocks, 2, used_cols, _SIDE, _SIDE), dtype=np.uint8)  # black when short
        flat = cells.reshape(blocks, 2, used_cols * _SIDE * _SIDE)
        for row, pixels in ((0, originals), (1, to_uint8(recon))):
            padded = np.zeros((blocks * used_cols, _SIDE, _SIDE), dtype=np.uint8)
            padded[:n] = pixels
            flat[:, row] = padded.reshape(blocks, -1)
        if npy is not None:
            with NpyWriter(npy, recon.shape, outputs=outputs) as writer:
                writer.write(recon)
        grid = tile(cells.reshape(-1, _SIDE, _SIDE), 2 * blocks, used_cols, padding, scale)
        outputs.write_bytes(out, png_bytes(grid))
        outputs.commit()
    written = ", ".join(str(p) for p in (out, npy) if p is not None)
    note = _precisions(encoder, decoder).removeprefix("; ")
    return f"{n} images reconstructed{f' ({note})' if note else ''} -> {written}"


def _precisions(*graphs: Encoder | Decoder) -> str:
    """ "; int8 decoder" for a summary line when a graph is not fp32, else ""."""
    if all(g.precision == "fp32" for g in graphs):
        return ""
    return "; " + ", ".join(f"{g.precision} {g.role}" for g in graphs)


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, array.shape[0], size):
        yield array[start : start + size]
