"""vae-serve under load, on loopback: a soak, and vae-serve against Ray Serve on one machine.

    python bench/serve_speed.py [--model model.pt] [--onnx-dir out/] [--soak-seconds 60]
                                [--serve-args "..."] [--quick]
    python bench/serve_speed.py --cluster [--pairs 5] [--seconds 2] [--requests 1000]
    python bench/serve_speed.py --peers ...   (bench/serve_peers.py: the comparisons with the
                                               FastAPI+torch reference, KServe's ModelServer,
                                               h11/asyncio, gRPC, model swaps)

This module also holds what the serving benches share: the load client (asyncio, one
keep-alive connection per concurrent client, requests prepared in advance, on the same cores as
the servers: a client costs CPU too, so the absolute figures are a floor and the ratios are
what compare), the request makers and the reference server a user would otherwise write
(REFERENCE: FastAPI + uvicorn loading model.pt with torch, `POST /decode {"z": [[...]]}` and
`GET /samples.png` drawn with torch and PIL; FastAPI is not a dependency of mnist-vae: `pip
install fastapi` for the benches that start it). Without --model a seed-architecture model.pt
with random weights is made (speed does not depend on the weights) and exported.

Default: the soak. --soak-seconds at concurrency 32, two good requests for each bad one
(malformed JSON, NaN, an unknown model, rows=0, seed=abc, a truncated binary tensor): no good
request may fail, every bad one must get a 4xx, and vae-serve's memory may grow by under 10%.

--cluster: vae-serve with N uvicorn workers against Ray Serve with N replicas (N = 1, 2;
`vae_serve.ray_serve`, a local Ray instance of 2 CPUs, Ray Serve's defaults otherwise), both
up at once on the same cores, V2 binary batch 25 and /samples.png 5x5 at concurrency 1, 8 and
32, each cell in alternating pairs (bench/measure.py). Needs the ray extra. A measurement, not
a test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from measure import MIN_PAIRS, alternate_samples, print_machine

BIN = Path(sys.executable).parent
CONCURRENCY = (1, 8, 32)

REFERENCE = '''
"""The server a user would write: FastAPI, torch, JSON in and out."""
import io
import sys

import torch
import uvicorn
from fastapi import FastAPI, Response
from PIL import Image
from pydantic import BaseModel

from vae_train.checkpoint import load_checkpoint

{threads}checkpoint = load_checkpoint(sys.argv[1])
model = checkpoint.build_model(sys.argv[1])
latent = checkpoint.config.latent_dim
app = FastAPI()


class DecodeRequest(BaseModel):
    z: list[list[float]]


@app.post("/decode")
def decode(request: DecodeRequest) -> dict:
    with torch.inference_mode():
        images = model.decode(torch.tensor(request.z, dtype=torch.float32))
    return {{"images": images.reshape(-1, 1, 28, 28).tolist()}}


@app.get("/samples.png")
def samples(seed: int = 0, rows: int = 5, cols: int = 5, temperature: float = 1.0) -> Response:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows * cols, latent, generator=generator) * temperature
    with torch.inference_mode():
        images = model.decode(z).reshape(rows, cols, 28, 28)
    grid = torch.zeros(rows * 30 + 2, cols * 30 + 2)
    for r in range(rows):
        for c in range(cols):
            grid[2 + r * 30 : 30 + r * 30, 2 + c * 30 : 30 + c * 30] = images[r, c]
    buffer = io.BytesIO()
    Image.fromarray((grid * 255).round().byte().numpy(), mode="L").save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png")


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


@dataclass
class Cell:
    """What one load run measured."""

    requests: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds during the run
    latencies: list[float] = field(default_factory=list)  # of good requests, seconds
    failed_good: int = 0
    bad_answered: int = 0  # bad requests answered with a 4xx
    bad_wrong: int = 0  # bad requests answered otherwise

    @property
    def cpu_ms(self) -> float:
        """Server CPU per request: what the throughput on saturated cores comes down to,
        and far less disturbed by other work on the machine than requests/s."""
        return self.cpu / self.requests * 1e3 if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.quantile(np.array(self.latencies), q) * 1e3)


@dataclass(frozen=True)
class Req:
    raw: bytes
    good: bool = True


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection: *close", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding: *chunked", re.IGNORECASE)


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = _LENGTH.search(head)
    if length is not None:
        await reader.readexactly(int(length.group(1)))
    elif _CHUNKED.search(head):  # KServe streams its binary replies
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")  # no trailers: the empty line
    else:
        raise RuntimeError(f"no Content-Length in {head[:200]!r}")
    return int(head[9:12]), _CLOSE.search(head) is not None


async def _load(
    port: int, requests: Sequence[Req], concurrency: int, seconds: float, budget: int
) -> Cell:
    cell = Cell()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(k: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while issued < budget and time.perf_counter() < deadline:
            issued += 1
            req = requests[i % len(requests)]
            i += concurrency
            start = time.perf_counter()
            try:
                writer.write(req.raw)
                status, close = await _answer(reader)
            except (OSError, asyncio.IncompleteReadError):
                status, close = 0, True
            elapsed = time.perf_counter() - start
            cell.requests += 1
            if req.good:
                if status == 200:
                    cell.latencies.append(elapsed)
                else:
                    cell.failed_good += 1
            elif 400 <= status < 500:
                cell.bad_answered += 1
            else:
                cell.bad_wrong += 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    cell.seconds = time.perf_counter() - start
    return cell


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and its children (uvicorn workers), MB."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live children (uvicorn workers) so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0.0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start in {timeout:.0f} s")


def prepare_model(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    model = args.model
    if model is None:
        import torch

        from vae_train.checkpoint import Checkpoint, save_checkpoint
        from vae_train.model import VAE, VAEConfig

        torch.manual_seed(0)
        model = work / "model.pt"
        save_checkpoint(Checkpoint(VAEConfig(), VAE(VAEConfig()).state_dict()), model)
    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        onnx_dir = work / "export"
        command = [BIN / "vae-export", model, "--out", onnx_dir, "--quiet"]
        subprocess.run(list(map(str, command)), check=True)
    return Path(model), Path(onnx_dir)


def v2_requests(latent: int, batch: int, binary: bool) -> list[Req]:
    from vae_runtime.sampling import sample_latents

    out = []
    for seed in range(16):
        z = sample_latents(batch, latent, seed)
        tensor = {"name": "z", "datatype": "FP32", "shape": [batch, latent]}
        if binary:
            head = orjson.dumps(
                {
                    "inputs": [{**tensor, "parameters": {"binary_data_size": z.nbytes}}],
                    "parameters": {"binary_data_output": True},
                }
            )
            headers = {"Inference-Header-Content-Length": str(len(head))}
            body = head + z.tobytes()
        else:
            body = orjson.dumps({"inputs": [{**tensor, "data": z.ravel().tolist()}]})
            headers = {"Content-Type": "application/json"}
        out.append(Req(http("POST", "/v2/models/decoder/infer", body, headers)))
    return out


def reference_requests(latent: int, batch: int) -> list[Req]:
    from vae_runtime.sampling import sample_latents

    return [
        Req(
            http(
                "POST",
                "/decode",
                orjson.dumps({"z": sample_latents(batch, latent, seed).tolist()}),
                {"Content-Type": "application/json"},
            )
        )
        for seed in range(16)
    ]


def png_requests() -> list[Req]:
    return [Req(http("GET", f"/samples.png?seed={s}&rows=5&cols=5")) for s in range(64)]


def bad_requests(latent: int) -> list[Req]:
    nan = np.full((1, latent), np.nan, np.float32)
    tensor = {"name": "z", "datatype": "FP32", "shape": [1, latent]}
    head = orjson.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": nan.nbytes}}]})
    infer = "/v2/models/decoder/infer"
    return [
        Req(http("POST", infer, b'{"inputs": [', {}), good=False),
        Req(
            http(
                "POST",
                infer,
                head + nan.tobytes(),
                {"Inference-Header-Content-Length": str(len(head))},
            ),
            good=False,
        ),
        Req(http("POST", "/v2/models/nope/infer", b"{}"), good=False),
        Req(http("GET", "/samples.png?rows=0"), good=False),
        Req(http("GET", "/samples.png?seed=abc"), good=False),
        Req(
            http(
                "POST",
                infer,
                head + nan.tobytes()[:7],
                {"Inference-Header-Content-Length": str(len(head))},
            ),
            good=False,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model.pt (default: random weights, seed size)")
    parser.add_argument("--onnx-dir", type=Path, help="its export (default: exported here)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs per cell (>= 5)")
    parser.add_argument("--seconds", type=float, default=2.0, help="at most, per sample")
    parser.add_argument("--requests", type=int, default=1000, help="at most, per sample")
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="the soak's length")
    parser.add_argument("--serve-args", default="", help="extra vae-serve options")
    parser.add_argument(
        "--cluster", action="store_true", help="vae-serve workers against Ray Serve replicas"
    )
    parser.add_argument(
        "--peers", action="store_true", help="the comparisons: bench/serve_peers.py's options"
    )
    parser.add_argument("--quick", action="store_true", help="seconds, to check the script")
    args, rest = parser.parse_known_args(argv)
    if args.peers:  # vae-serve against KServe, itself on h11, the reference; gRPC, model swaps
        import serve_peers

        return serve_peers.main([a for a in (argv or sys.argv[1:]) if a != "--peers"])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    if args.quick:  # not a measurement
        args.pairs, args.seconds, args.requests, args.soak_seconds = MIN_PAIRS, 0.3, 100, 3.0
    print_machine("vae-serve under load" + (": against Ray Serve" if args.cluster else ": soak"))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, onnx_dir = prepare_model(args, work)
        from vae_runtime.session import Decoder

        latent = Decoder.load(onnx_dir / "decoder.onnx").latent_dim
        if args.cluster:
            return cluster_comparison(args, onnx_dir, latent)
        port, ours, _ = start_vae_serve(onnx_dir, *shlex.split(args.serve_args))
        try:
            return soak(args, latent, ours, port)
        finally:
            ours.send_signal(signal.SIGTERM)
            print(f"vae-serve exit code after SIGTERM: {ours.wait(60)}")


def start_vae_serve(
    onnx_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, subprocess.Popen[bytes], str]:
    """vae-serve on a free loopback port (`env` added to ours): its port once it listens, the
    process, and the line it announced itself with (which names a gRPC port, if any)."""
    command = [BIN / "vae-serve", "--onnx-dir", onnx_dir, "--port", "0", "--log-level", "warning"]
    process = subprocess.Popen(
        [*map(str, command), *extra], stdout=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "http://127.0.0.1:" not in line:
        process.kill()
        sys.exit(f"vae-serve did not start: {line.strip()}")
    return int(line.split("http://127.0.0.1:")[1].split()[0].rstrip(";,)")), process, line


def soak(args: argparse.Namespace, latent: int, ours: subprocess.Popen[bytes], port: int) -> int:
    """--soak-seconds at concurrency 32, two good requests for each bad one: no good request
    fails, every bad one gets a 4xx, and vae-serve's memory grows by under 10%."""
    mixed = [
        *v2_requests(latent, 25, True)[:4],
        *v2_requests(latent, 1, False)[:4],
        *png_requests()[:4],
        *bad_requests(latent),
    ]
    asyncio.run(_load(port, mixed, 8, min(args.soak_seconds, 1.0), 500))  # warm-up
    before = rss_mb(ours.pid)
    cell = asyncio.run(_load(port, mixed, 32, args.soak_seconds, 10**9))
    after = rss_mb(ours.pid)
    growth = (after - before) / before
    good = len(cell.latencies)
    bad = cell.bad_answered + cell.bad_wrong
    ok = cell.failed_good == 0 and cell.bad_wrong == 0 and growth < 0.10
    print(
        f"soak {cell.seconds:.0f} s at c=32: {cell.requests:,} requests ({cell.rps:.0f}/s): "
        f"{good:,} good ({cell.failed_good} failed, p99 {cell.ms(0.99):.1f} ms), "
        f"{bad:,} bad ({cell.bad_answered:,} answered 4xx, {cell.bad_wrong} otherwise); "
        f"memory {before:.0f} -> {after:.0f} MB ({growth:+.1%}; < 10%): "
        f"{'ok' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


def sampler(
    pid: int | None, port: int, requests: Sequence[Req], concurrency: int, args: argparse.Namespace
) -> tuple[Callable[[], float], list[Cell]]:
    """A sample: one load run bounded by --seconds and --requests; returns seconds per request
    and keeps each Cell (with the server's CPU seconds when its pid is given). A failed good
    request ends the bench: a server that fails is not measured."""
    cells: list[Cell] = []

    def sample() -> float:
        before = cpu_seconds(pid) if pid else 0.0
        cell = asyncio.run(_load(port, requests, concurrency, args.seconds, args.requests))
        cell.cpu = cpu_seconds(pid) - before if pid else 0.0
        if cell.failed_good or not cell.latencies:
            sys.exit(f"port {port}: {cell.failed_good} of {cell.requests} requests failed")
        cells.append(cell)
        return cell.seconds / cell.requests

    return sample, cells


def cluster_comparison(args: argparse.Namespace, onnx_dir: Path, latent: int) -> int:
    """vae-serve with N uvicorn workers against Ray Serve with N replicas (N = 1, 2), both up
    at once on the same cores, in alternating pairs per cell (bench/measure.py)."""
    import ray
    from ray import serve

    from vae_serve import ray_serve as cluster
    from vae_serve.app import ServeConfig

    scenarios = {"binary b25": v2_requests(latent, 25, True), "/samples.png 5x5": png_requests()}
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
    print(f"Ray started in {time.perf_counter() - started:.1f} s")
    bundle = cluster.Bundle.read(ServeConfig(onnx_dir=onnx_dir))
    print(
        f"per cell: Ray Serve's seconds per request over vae-serve's (how many times vae-serve "
        f"is faster), the median of {args.pairs} alternating pairs (min-max, IQR); then each "
        "side's median requests/s, p50 and p99 (ms)"
    )
    try:
        for n in (1, 2):
            started = time.perf_counter()
            app = cluster.application(bundle, cluster.Replicas(num_replicas=n))
            serve.run(app, name=cluster.APP_NAME, route_prefix="/")
            print(f"\n{n} replica(s) deployed in {time.perf_counter() - started:.1f} s")
            our_port, ours, _ = start_vae_serve(onnx_dir, "--workers", str(n))
            time.sleep(1.0 * n)  # the workers load the graphs after the socket is bound
            try:
                for scenario, requests in scenarios.items():
                    for c in CONCURRENCY:
                        sample_ours, our_cells = sampler(ours.pid, our_port, requests, c, args)
                        sample_ray, ray_cells = sampler(None, ray_port, requests, c, args)
                        result = alternate_samples(
                            sample_ours,
                            sample_ray,
                            args.pairs,
                            warmup=1,
                            label=f"{n} replica(s), {scenario} c={c}",
                        )
                        mine, theirs = our_cells[1:], ray_cells[1:]  # the warm-up pair out
                        print(
                            f"  vae-serve {n} worker(s) / Ray Serve {n} replica(s), {scenario:<16} "
                            f"c={c:<2}  {result.ratio.show(unit='x')}   "
                            f"{_medians(mine)}  vs  {_medians(theirs)}",
                            flush=True,
                        )
            finally:
                ours.send_signal(signal.SIGTERM)
                ours.wait(60)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _medians(cells: Sequence[Cell]) -> str:
    rps = statistics.median(c.rps for c in cells)
    p50 = statistics.median(c.ms(0.5) for c in cells)
    p99 = statistics.median(c.ms(0.99) for c in cells)
    return f"{rps:6.0f} req/s {p50:6.2f} {p99:7.1f} ms"


if __name__ == "__main__":
    sys.exit(main())
