"""serve_peers.py --swap: vae-serve's latency while a re-export is swapped in, against quiet.

One `vae-serve --model-control poll --poll-seconds 0.5` serves a copy D (under a temp dir) of
export A. Windows of `--seconds` each (at most SWAP_BUDGET requests) run a stream of batch-1
binary decoder requests from CLIENTS concurrent connections (serve_speed.py's raw asyncio
client), alternating in measure.py's pairs: a quiet window, and a swap window in which the other
export (A or B, in turn) is copied into D as vae-export writes it: each graph first, then
manifest.json, each written to a temporary file in D and renamed over the old one (os.replace).
A copy, not `vae-export --force`, so that the export's own torch CPU time does not land in the
swap window and read as the server's. B: the same config with fresh weights (seed 1), exported
once. During a swap a probe request (a fixed z, its own connection) runs until the new export
answers it (max |diff| <= 1e-5 against that export's Decoder.decode); every probe reply must be
one of the two exports'. The figure per pair is the swap window's p99 over the quiet one's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from measure import alternate_samples, spread
from serve_speed import BIN, Cell, _load, http, v2_requests

CLIENTS = 4  # concurrent connections of the stream
POLL = ("--model-control", "poll", "--poll-seconds", "0.5")
SWAP_BUDGET = 100_000  # requests per window, at most (the window's seconds bind first)
MANIFEST = "manifest.json"
PROBE_SEED = 12345


@dataclass
class Export:
    """An export folder and its decoder's answer to the probe."""

    name: str
    folder: Path
    expected: np.ndarray


@dataclass
class Tally:
    """Every window's cells, the swaps' times to answer, and what failed."""

    quiet: list[Cell] = field(default_factory=list)
    swaps: list[Cell] = field(default_factory=list)
    answered_s: list[float] = field(default_factory=list)
    failed: int = 0
    requests: int = 0
    problems: list[str] = field(default_factory=list)


def second_export(model: Path, work: Path) -> Path:
    """B: model.pt's config with fresh weights (seed 1), exported once into work/export-b."""
    import torch

    from vae_train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from vae_train.model import VAE

    config = load_checkpoint(model).config
    torch.manual_seed(1)
    other = work / "model-b.pt"
    save_checkpoint(Checkpoint(config, VAE(config).state_dict()), other)
    out = work / "export-b"
    command = [BIN / "vae-export", other, "--out", out, "--quiet"]
    subprocess.run(list(map(str, command)), check=True)
    return out


def copy_export(source: Path, served: Path) -> None:
    """Copy `source`'s files into `served` in vae-export's order: graphs, then the manifest;
    each written to a temporary name in `served` and renamed over the old file."""
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name != MANIFEST)
    for path in [*files, source / MANIFEST]:
        staged = served / f".{path.name}.swap-tmp"
        shutil.copyfile(path, staged)
        os.replace(staged, served / path.name)


def probe_request(z: np.ndarray) -> bytes:
    tensor = {"name": "z", "datatype": "FP32", "shape": list(z.shape)}
    head = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": z.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    headers = {"Inference-Header-Content-Length": str(len(head))}
    return http("POST", "/v2/models/decoder/infer", head + z.tobytes(), headers)


async def probe(port: int, raw: bytes) -> np.ndarray | None:
    """One probe on its own connection: the image, or None when it failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
        low = {k.strip().lower(): v.strip() for k, v in fields.items()}
        body = await reader.readexactly(int(low[b"content-length"]))
        writer.close()
    except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
        return None
    if head[9:12] != b"200" or b"inference-header-content-length" not in low:
        return None
    return np.frombuffer(body[int(low[b"inference-header-content-length"]) :], np.float32)


def which(image: np.ndarray | None, exports: tuple[Export, Export]) -> Export | None:
    """The export whose decoder gave `image`, None for a failure or a reply of neither."""
    for export in exports:
        fits = image is not None and image.size == export.expected.size
        if fits and float(np.abs(image - export.expected.ravel()).max()) <= 1e-5:
            return export
    return None


async def window(
    port: int,
    requests: list[Any],
    seconds: float,
    raw: bytes,
    served: Path,
    exports: tuple[Export, Export],
    current: Export,
    to: Export | None,
    tally: Tally,
) -> tuple[Cell, Export]:
    """One window: the stream for `seconds`; with `to`, its copy into `served` at the start and
    probes until it answers. Returns the stream's Cell and the export served at its end."""
    stream = asyncio.create_task(_load(port, requests, CLIENTS, seconds, SWAP_BUDGET))
    probes = 1
    if to is None:
        got = which(await probe(port, raw), exports)
        if got is not current:
            tally.problems.append(f"a quiet window's probe was not {current.name}'s reply")
    else:
        started = time.perf_counter()
        await asyncio.to_thread(copy_export, to.folder, served)
        while True:
            got = which(await probe(port, raw), exports)
            if got is None:
                tally.problems.append(f"a probe during the swap to {to.name} failed or mixed")
                break
            if got is to:
                tally.answered_s.append(time.perf_counter() - started)
                current = to
                break
            if stream.done():
                tally.problems.append(f"{to.name} did not answer within the {seconds} s window")
                break
            await asyncio.sleep(0.02)
            probes += 1
    cell = await stream
    tally.requests += cell.requests + probes
    tally.failed += cell.failed_good + (got is None)
    return cell, current


def swap_report(
    onnx_dir: Path,
    model: Path,
    work: Path,
    latent: int,
    serve: Callable[..., AbstractContextManager[Any]],
    args: argparse.Namespace,
) -> bool:
    """Run the alternating quiet and swap windows; print the figures; True when none failed."""
    from vae_runtime.session import Decoder

    served = work / "served"
    shutil.copytree(onnx_dir, served)
    z = np.random.default_rng(PROBE_SEED).standard_normal((1, latent)).astype(np.float32)
    folders = (onnx_dir, second_export(model, work))
    a, b = (
        Export(n, f, Decoder.load(f / "decoder.onnx").decode(z))
        for n, f in zip("AB", folders, strict=True)
    )
    if float(np.abs(a.expected - b.expected).max()) < 1e-2:
        sys.exit("the two exports answer alike: a swap could not be seen")
    exports, raw, requests = (a, b), probe_request(z), v2_requests(latent, 1, True)
    tally, state = Tally(), {"current": a}

    def sampler(swap: bool) -> Callable[[], float]:
        def sample() -> float:
            now = state["current"]
            to = (b if now is a else a) if swap else None
            cell, state["current"] = asyncio.run(
                window(server.port, requests, args.seconds, raw, served, exports, now, to, tally)
            )
            (tally.swaps if swap else tally.quiet).append(cell)
            return cell.ms(0.99)

        return sample

    with serve(served, *POLL) as server:
        result = alternate_samples(sampler(False), sampler(True), pairs=args.pairs, warmup=1)
    quiet, swaps = tally.quiet[1:], tally.swaps[1:]  # the warm-up pair out
    ratio = spread(result.ratios)
    print(
        f"\nlatency during a model swap / quiet (batch-1 binary, {CLIENTS} clients, "
        f"--poll-seconds 0.5, {args.seconds} s windows; swap: the other export's files copied "
        "in, graphs first, manifest.json last, each renamed into place):"
    )
    print(
        f"  p99 swap/quiet  {ratio.median:5.2f}x ({ratio.low:.2f}-{ratio.high:.2f}, "
        f"{ratio.n} pairs)"
    )
    for q, label in ((0.5, "p50"), (0.99, "p99"), (1.0, "max")):
        ms = [statistics.median(c.ms(q) for c in cells) for cells in (quiet, swaps)]
        print(f"  {label} ms         quiet {ms[0]:7.2f}  swap {ms[1]:7.2f}  (median of windows)")
    if tally.answered_s:
        ans = spread(tally.answered_s)
        print(
            f"  new export answering after {ans.median:.2f} s ({ans.low:.2f}-{ans.high:.2f}) "
            f"of {ans.n} swaps"
        )
    print(f"  failed requests: {tally.failed} of {tally.requests}")
    for problem in dict.fromkeys(tally.problems):
        print(f"  FAILED: {problem}")
    return tally.failed == 0 and not tally.problems
