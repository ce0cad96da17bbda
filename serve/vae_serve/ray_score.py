"""`vae-score --ray`: per-image scores of an image archive on Ray Data, in Parquet shards.

The driver lists the inputs (image files, folders of them, `.npy` shards, IDX files) in the
order the single-process `vae-score` reads them (`vae_runtime.sources`) and gives every image
its global index there; the list becomes a dataset of work items (runs of at most CHUNK images
with the index of their first), and `map_batches` runs one `Scorer` per actor (a callable
class) over them. Each scorer draws image j's noise from (seed, j) with j the global index, so
every row is bit for bit what the single-process command computes. The graphs travel with the
job as bytes (`ray_serve.Bundle`, as `vae-serve --ray` ships them): no node needs a path of the
driver's machine, but the output folder must be one every node can write (a shared file system
on a cluster). Rows: source, index, elbo, iwae, bce, percentile (NaN without a reference),
written as Parquet shards (pyarrow comes with ray[data]) into a staging folder beside --out,
renamed into place at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from vae_runtime.console import VaeCommand, make_app
from vae_runtime.errors import (
    InvalidArgumentError,
    VaeError,
    check_float,
    check_int,
)
from vae_runtime.fileio import refused_existing
from vae_runtime.idx import IMAGES_MAGIC, read_idx
from vae_runtime.score_task import COLUMNS  # vae-score's CSV columns, the shards' too
from vae_runtime.sources import list_sources

from .app import ServeConfig
from .ray_serve import INSTALL_HINT, Bundle

CHUNK = 256  # images per work item: enough to keep a scorer's graph runs large
SHARD_SUFFIX = ".parquet"


@dataclass(frozen=True)
class Item:
    """A run of images of one file: `count` rows from `offset` (a file of one image: 0, 1),
    whose first is image `start` of the whole job."""

    path: str
    kind: str  # "image", "npy" or "idx"
    offset: int
    count: int
    start: int


def plan(paths: Sequence[Path | str], chunk: int = CHUNK) -> list[Item]:
    """The work items of `paths` in vae-score's order (`sources.list_sources`: each path as
    given, a folder's image and .npy files by name). Image files are grouped `chunk` at a time;
    arrays are split into runs of `chunk`."""
    check_int("chunk", chunk, 1)
    items: list[Item] = []
    start = 0
    for source in list_sources(paths):
        path, kind, rows = str(source.path), source.kind, source.count
        if kind == "image" and items and items[-1].kind == "group" and items[-1].count < chunk:
            last = items[-1]
            items[-1] = Item(f"{last.path}\n{path}", "group", 0, last.count + 1, last.start)
        elif kind == "image":
            items.append(Item(path, "group", 0, 1, start))
        else:
            items.extend(
                Item(path, kind, off, min(chunk, rows - off), start + off)
                for off in range(0, rows, chunk)
            )
        start += rows
    return items


def read_item(item: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    """The images of one work item, as the runtime reads them, and each one's source."""
    from vae_runtime.inputs import read_image

    kind, offset, count = str(item["kind"]), int(item["offset"]), int(item["count"])
    if kind == "group":
        paths = str(item["path"]).split("\n")
        return np.stack([read_image(p) for p in paths]), paths
    path = str(item["path"])
    if kind == "npy":  # as sources.iter_images reads an array: float ones as float32
        images = np.array(np.load(path, mmap_mode="r", allow_pickle=False)[offset : offset + count])
        if images.dtype.kind == "f":
            images = images.astype(np.float32).reshape(-1, 1, 28, 28)
    else:
        images = read_idx(Path(path), IMAGES_MAGIC, limit=offset + count)[offset:]
    return images, [f"{path}:{offset + i}" for i in range(count)]


class ShardScorer:
    """One per actor: the bundle's graphs loaded once as a `Scorer`, then batches of items."""

    def __init__(self, bundle: Bundle, k: int, seed: int, precision: str, threads: int) -> None:
        from vae_runtime.scoring import Scorer

        folder = Path(tempfile.mkdtemp(prefix="mnist-vae-score-"))
        try:
            config = bundle.unpack(folder)
            assert config.onnx_dir is not None
            self.scorer = Scorer.load(config.onnx_dir, precision=precision, threads=threads)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.k, self.seed = k, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources: list[str] = []
        columns: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS[1:]}
        for i in range(len(batch["start"])):
            item = {key: values[i] for key, values in batch.items()}
            images, names = read_item(item)
            start = int(item["start"])
            scores = self.scorer.score(images, k=self.k, seed=self.seed, start=start)
            sources.extend(names)
            columns["index"].append(np.arange(start, start + len(images), dtype=np.int64))
            columns["elbo"].append(scores.elbo)
            columns["iwae"].append(scores.iwae)
            columns["bce"].append(scores.bce)
            columns["percentile"].append(
                self.scorer.percentile(scores.iwae)
                if self.scorer.reference is not None
                else np.full(len(images), np.nan)
            )
        out = {"source": np.array(sources, dtype=object)}
        out.update({name: np.concatenate(parts) for name, parts in columns.items()})
        return out


def score_archive(
    paths: Sequence[Path | str],
    onnx_dir: Path,
    out: Path,
    *,
    k: int,
    seed: int,
    precision: str = "fp32",
    threads: int = 1,
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    address: str | None = None,
    force: bool = False,
    chunk: int = CHUNK,
    quiet: bool = False,
) -> dict[str, Any]:
    """Score every image of `paths` on Ray (the cluster at `address`, or a local instance; one
    already initialised in this process is used as it is) into Parquet shards under `out`.
    Returns the summary: count, mean iwae, the lowest five (source, index, iwae), shards."""
    from vae_runtime.scoring import MAX_K

    check_int("k", k, 1, MAX_K)
    check_int("seed", seed, 0, 2**63 - 1)
    check_int("actors", actors, 1, 10_000)
    check_float("cpus per actor", cpus_per_actor, 0.0, 1024.0)
    out = Path(out)
    _check_out(out, force)
    items = plan(paths, chunk)
    bundle = Bundle.read(ServeConfig(onnx_dir=Path(onnx_dir), precision=precision))
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise VaeError(f"Ray Data is not installed ({exc}); {INSTALL_HINT}") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # No per-stage INFO lines; quiet: Ray Data's warnings neither (a busy cluster's "no
        # available CPUs" while the last run's actors leave), only errors.
        logging.getLogger("ray.data").setLevel(logging.ERROR if quiet else logging.WARNING)
        dataset = ray.data.from_items([vars(item) for item in items]).map_batches(
            ShardScorer,
            fn_constructor_args=(bundle, k, seed, precision, threads),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),  # one Scorer per actor
            num_cpus=cpus_per_actor,
        )
        dataset = dataset.materialize()
        dataset.write_parquet(str(staging))
        table = dataset.select_columns(["source", "index", "iwae"]).to_pandas()
        _publish(staging, out, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if started_here:
            ray.shutdown()
    table = table.sort_values("index")
    lowest = table.nsmallest(5, "iwae", keep="first")
    return {
        "count": len(table),
        "mean_iwae": float(table["iwae"].mean()),
        "lowest": [(str(r.source), int(r.index), float(r.iwae)) for r in lowest.itertuples()],
        "iwae": table["iwae"].to_numpy(),
        "shards": sorted(p.name for p in out.iterdir()),
    }


def _check_out(out: Path, force: bool) -> None:
    """An output folder that may be written: absent, or with `force` one of earlier shards."""
    if not out.exists() and not out.is_symlink():
        if not out.parent.is_dir():
            raise InvalidArgumentError(f"{out.parent}: no such folder for --out")
        return
    ours = out.is_dir() and not out.is_symlink() and all(_is_shard(p) for p in out.iterdir())
    if not force or not ours:
        raise refused_existing(out, "" if ours else "a folder that is not vae-score --ray's")


def _is_shard(path: Path) -> bool:
    return path.is_file() and path.suffix == SHARD_SUFFIX


def _publish(staging: Path, out: Path, force: bool) -> None:
    """The staged shards become `out` in one rename (an older `out` of shards, with `force`)."""
    old = None
    if out.exists():
        _check_out(out, force)
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_HELP = (
    "Score an image archive too large for one machine on Ray Data: vae-score's rows (source, "
    "index, elbo, iwae, bce, percentile; the same numbers bit for bit for the same seed and k) "
    "as Parquet shards in the folder --out. One Scorer per actor; the graphs travel with the "
    "job. Inputs: image files, folders of them, .npy shards, IDX files. Needs pip install "
    "'mnist-vae[ray]'. Writes: the folder --out (an existing one of shards only with --force)."
)

app = make_app(_HELP)


@app.command(cls=VaeCommand, help=_HELP)
def ray_score_command(
    images: list[Path] = typer.Argument(..., help="Image files, folders, .npy shards, IDX."),
    onnx_dir: Path = typer.Option(..., "--onnx-dir", help="The folder vae-export wrote."),
    k: int = typer.Option(64, "-k", "--k", help="Importance samples per image."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draws (image j: (seed, j))."),
    precision: str = typer.Option("fp32", "--precision", metavar="fp32|int8|fp16"),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of Parquet shards to write."),
    ray: bool = typer.Option(True, "--ray", help="Run on Ray Data (this command always does)."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster instead of starting one."
    ),
    actors: int = typer.Option(2, "--actors", help="Scorer actors, each with its own graphs."),
    cpus_per_actor: float = typer.Option(1.0, "--cpus-per-actor", help="CPUs Ray reserves."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime threads per actor."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an earlier --out."),
) -> None:
    """Score images on Ray Data into Parquet shards."""
    summary = score_archive(
        images,
        onnx_dir,
        out,
        k=k,
        seed=seed,
        precision=precision,
        threads=threads,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        address=ray_address,
        force=force,
        quiet=quiet,
    )
    if not quiet:
        print(
            f"scored {summary['count']:,} images into {out} ({len(summary['shards'])} shards): "
            f"mean iwae {summary['mean_iwae']:.2f} nats"
        )
        for source, index, value in summary["lowest"]:
            print(f"  lowest: {value:.2f} nats  #{index}  {source}")
