"""vae-serve against its peers, in one run, in alternating pairs, on loopback.

    python bench/serve_peers.py [--model model.pt] [--onnx-dir out/] [--pairs 5]
                                [--requests 1000] [--seconds 2] [--kserve-venv DIR]
                                [--skip kserve,stack,reference] [--grpc] [--swap] [--quick]

Peers of vae-serve on the same decoder.onnx (docs/benchmarks.md says more): KServe's own
`ModelServer` (bench/kserve_peer.py, installed here into a venv of its own, never in mnist-vae's
extras; batch {1, 25} x {binary, JSON} x concurrency {1, 8}, target >= 1.5x and a lower p99),
vae-serve itself on h11/asyncio (VAE_SERVE_HTTP=h11), the FastAPI+torch reference of
serve_speed.py (JSON; vae-serve binary and JSON at batch 1 and 25, targets >= 3x and >= 1x,
and /samples.png 5x5, p99 at c=8 < 20 ms; concurrency 1, 8 and 32; both servers' memory);
--grpc: gRPC beside HTTP; --swap: latency
during a model swap against quiet (bench/serve_swap.py); --quick: seconds, to check the script
(--grpc, --swap only). Every server is checked through tritonclient.http against Decoder.decode;
both sides of a pair get the same tritonclient-made bodies through serve_speed.py's load client.
Per cell: the median of the pairs' ratios (bench/measure.py) with min-max, for requests/s (the
peer's seconds per request over vae-serve's) and p99 (the peer's over vae-serve's).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from measure import alternate_samples, print_machine, spread
from serve_speed import (
    BIN,
    REFERENCE,
    Cell,
    Req,
    free_port,
    http,
    png_requests,
    prepare_model,
    reference_requests,
    rss_mb,
    wait_for,
)
from serve_speed import CONCURRENCY as ALL_CONCURRENCY
from serve_speed import sampler as load_sampler
from serve_speed import start_vae_serve as launch_vae_serve

HERE = Path(__file__).parent
KSERVE = ("kserve==0.21.0", "onnxruntime", "numpy")  # the peer's venv: nothing of ours
BATCHES, KINDS, CONCURRENCY = (1, 25), ("binary", "JSON"), (1, 8)


class NotAvailable(Exception):
    """A column this build of vae-serve cannot run (one line)."""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    grpc: str | None = None  # host:port of vae-serve's gRPC front, when asked for


def kserve_python(args: argparse.Namespace) -> Path:
    """The Python of the KServe venv, made and filled on first use."""
    home = args.kserve_venv
    if home is None:
        cache = os.environ.get("XDG_CACHE_HOME")
        home = Path(cache) / "mnist-vae" / "kserve-venv" if cache else HERE / ".venv-kserve"
    python = Path(home) / "bin" / "python"
    ready = python.exists() and subprocess.run([python, "-c", "import kserve"]).returncode == 0
    if not ready:
        print(f"installing {', '.join(KSERVE)} into {home} (once; ~530 MB)", flush=True)
        venv.create(home, with_pip=True, clear=True)
        subprocess.run([python, "-m", "pip", "install", "-q", *KSERVE], check=True)
    return python


def start_vae_serve(onnx_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port, process, line = launch_vae_serve(onnx_dir, *extra, env=env)
    grpc = line.split("gRPC at ")[1].split()[0].rstrip(";,)") if "gRPC at " in line else None
    name = "vae-serve" + "".join(f" {k}={v}" for k, v in (env or {}).items())
    return Server(name, process, port, grpc)


def start_kserve(python: Path, onnx: Path) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [str(python), str(HERE / "kserve_peer.py"), "--onnx", str(onnx), "--http_port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(port, process, "KServe's ModelServer")
    return Server("KServe", process, port)


def start_reference(model: Path, work: Path) -> Server:
    script = work / "reference_server.py"
    script.write_text(REFERENCE.format(threads=""))
    port = free_port()
    process = subprocess.Popen([sys.executable, str(script), str(model), str(port)])
    wait_for(port, process, "the FastAPI+torch reference")
    return Server("FastAPI+torch", process, port)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def running(start: Callable[[], Server]) -> Iterator[Server]:
    server = start()
    try:
        yield server
    finally:
        stop(server)


def triton_requests(latent: int, batch: int, binary: bool) -> list[Req]:
    """16 V2 requests for `decoder`, each the body tritonclient.http would send."""
    import tritonclient.http as th

    from vae_runtime.sampling import sample_latents

    out = []
    for seed in range(16):
        tensor = th.InferInput("z", [batch, latent], "FP32")
        tensor.set_data_from_numpy(sample_latents(batch, latent, seed), binary_data=binary)
        wanted = [th.InferRequestedOutput("image", binary_data=binary)]
        body, json_size = th.InferenceServerClient.generate_request_body([tensor], wanted)
        headers = {"Content-Type": "application/json"}  # KServe reads a body as JSON only then
        if json_size is not None:
            headers = {"Inference-Header-Content-Length": str(json_size)}
        out.append(Req(http("POST", "/v2/models/decoder/infer", body, headers)))
    return out


def check_v2(server: Server, onnx: Path) -> None:
    """The server answers tritonclient.http, binary and JSON, with Decoder.decode's images."""
    import tritonclient.http as th

    from vae_runtime.session import Decoder

    decoder = Decoder.load(onnx)
    z = np.random.default_rng(0).standard_normal((3, decoder.latent_dim)).astype(np.float32)
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    for binary in (True, False):
        tensor = th.InferInput("z", list(z.shape), "FP32")
        tensor.set_data_from_numpy(z, binary_data=binary)
        wanted = [th.InferRequestedOutput("image", binary_data=binary)]
        headers = None if binary else {"Content-Type": "application/json"}
        images = client.infer("decoder", [tensor], outputs=wanted, headers=headers)
        diff = float(np.abs(images.as_numpy("image") - decoder.decode(z)).max())
        if diff > 1e-5:
            sys.exit(f"{server.name} answers differently from Decoder.decode (max diff {diff})")
    client.close()


def sampler(
    server: Server, requests: Sequence[Req], concurrency: int, args: argparse.Namespace
) -> tuple[Callable[[], float], list[Cell]]:
    """A sample: one bounded load run; returns seconds per request and keeps each Cell."""
    return load_sampler(server.process.pid, server.port, requests, concurrency, args)


@dataclass
class Row:
    """One cell of a comparison: vae-serve against a peer, pair by pair."""

    label: str
    throughput: list[float]  # the peer's seconds per request over vae-serve's, per pair
    p99: list[float]  # the peer's p99 over vae-serve's, per pair
    ours: list[Cell]
    peer: list[Cell]

    def show(self, target: float | None, p99_lower: bool = True) -> tuple[str, bool]:
        t, p = spread(self.throughput), spread(self.p99)
        rps = np.median([c.rps for c in self.ours]), np.median([c.rps for c in self.peer])
        p99s = (
            np.median([c.ms(0.99) for c in self.ours]),
            np.median([c.ms(0.99) for c in self.peer]),
        )
        ok = target is None or (t.median >= target and (p.median > 1 or not p99_lower))
        verdict = "" if target is None else ("  ok" if ok else "  MISSED")
        return (
            f"  {self.label:<22} {t.median:5.2f}x ({t.low:.2f}-{t.high:.2f})  p99 {p.median:5.2f}x "
            f"({p.low:.2f}-{p.high:.2f})  req/s {rps[0]:7.0f} vs {rps[1]:7.0f}  p99 ms "
            f"{p99s[0]:6.2f} vs {p99s[1]:6.2f}{verdict}"
        ), ok


def compare(
    label: str,
    ours: Server,
    peer: Server,
    requests: tuple[Sequence[Req], Sequence[Req]],
    concurrency: int,
    args: argparse.Namespace,
) -> Row:
    sample_ours, ours_cells = sampler(ours, requests[0], concurrency, args)
    sample_peer, peer_cells = sampler(peer, requests[1], concurrency, args)
    result = alternate_samples(
        sample_ours, sample_peer, pairs=args.pairs, warmup=1, label=f"{peer.name}, {label}"
    )
    ours_cells, peer_cells = ours_cells[1:], peer_cells[1:]  # the warm-up pair out
    p99 = [p.ms(0.99) / o.ms(0.99) for o, p in zip(ours_cells, peer_cells, strict=True)]
    return Row(label, result.ratios, p99, ours_cells, peer_cells)


def report(title: str, rows: Sequence[Row], target: float | None, p99_lower: bool = True) -> bool:
    print(f"\n{title}")
    ok = True
    for row in rows:
        line, good = row.show(target, p99_lower)
        ok &= good
        print(line, flush=True)
    return ok


def reference_rows(
    ours: Server, model: Path, work: Path, latent: int, args: argparse.Namespace
) -> bool:
    """vae-serve against the FastAPI+torch reference (JSON): vae-serve's binary (target >= 3x)
    and JSON (>= 1x) at batch 1 and 25, then /samples.png 5x5 (p99 at c=8 < 20 ms), at
    concurrency 1, 8 and 32; then both servers' resident memory."""
    ok = True
    with running(lambda: start_reference(model, work)) as reference:
        for batch in BATCHES:
            theirs = reference_requests(latent, batch)
            for kind, target in (("binary", 3.0), ("JSON", 1.0)):
                mine = triton_requests(latent, batch, kind == "binary")
                rows = [
                    compare(f"{kind} b{batch} c={c}", ours, reference, (mine, theirs), c, args)
                    for c in ALL_CONCURRENCY
                ]
                ok &= report(
                    f"vae-serve {kind} / FastAPI+torch JSON, batch {batch}: requests/s, p99 "
                    f"(the reference's over ours); target >= {target:g}x requests/s",
                    rows,
                    target,
                    p99_lower=False,
                )
        png = png_requests()
        rows = [
            compare(f"/samples.png 5x5 c={c}", ours, reference, (png, png), c, args)
            for c in ALL_CONCURRENCY
        ]
        report("/samples.png 5x5, vae-serve / FastAPI+torch:", rows, None)
        p99 = spread([cell.ms(0.99) for cell in rows[ALL_CONCURRENCY.index(8)].ours])
        fast = p99.median < 20
        print(
            f"  vae-serve's /samples.png 5x5 p99 at c=8: {p99.show(1, ' ms')} "
            f"(< 20 ms: {'ok' if fast else 'MISSED'})"
        )
        print(
            f"  resident memory after the pairs: vae-serve {rss_mb(ours.process.pid):.0f} MB, "
            f"FastAPI+torch {rss_mb(reference.process.pid):.0f} MB"
        )
    return ok and fast


def grpc_rows(ours: Server, latent: int, args: argparse.Namespace) -> list[Row]:
    """gRPC beside HTTP on one vae-serve, both through tritonclient's asyncio clients."""
    if ours.grpc is None:
        raise NotAvailable("gRPC beside HTTP: vae-serve --grpc-port is not available in this build")
    rows = []
    for batch in BATCHES:
        for c in CONCURRENCY:
            via_grpc, grpc_cells = triton_sampler("grpc", ours.grpc, batch, latent, c, args)
            via_http, http_cells = triton_sampler(
                "http", f"127.0.0.1:{ours.port}", batch, latent, c, args
            )
            result = alternate_samples(
                via_grpc, via_http, args.pairs, warmup=1, label=f"gRPC, b{batch} c={c}"
            )
            g, h = grpc_cells[1:], http_cells[1:]
            p99 = [b.ms(0.99) / a.ms(0.99) for a, b in zip(g, h, strict=True)]
            rows.append(Row(f"binary b{batch} c={c}", result.ratios, p99, g, h))
    return rows


def triton_sampler(
    protocol: str,
    address: str,
    batch: int,
    latent: int,
    concurrency: int,
    args: argparse.Namespace,
) -> tuple[Callable[[], float], list[Cell]]:
    """A sample through tritonclient's asyncio client for `protocol` ("grpc" or "http"):
    binary tensors, `concurrency` requests in flight; seconds per request, each Cell kept."""
    from vae_runtime.sampling import sample_latents

    if protocol == "grpc":
        import tritonclient.grpc as api
        import tritonclient.grpc.aio as aio
    else:
        import tritonclient.http as api  # type: ignore[no-redef]
        import tritonclient.http.aio as aio  # type: ignore[no-redef]
    inputs = []
    for seed in range(16):
        tensor = api.InferInput("z", [batch, latent], "FP32")
        if protocol == "grpc":
            tensor.set_data_from_numpy(sample_latents(batch, latent, seed))
        else:
            tensor.set_data_from_numpy(sample_latents(batch, latent, seed), binary_data=True)
        inputs.append(tensor)
    wanted = [api.InferRequestedOutput("image")]
    cells: list[Cell] = []

    async def load() -> Cell:
        client = aio.InferenceServerClient(address)
        cell, issued = Cell(), 0
        deadline = time.perf_counter() + args.seconds

        async def one(k: int) -> None:
            nonlocal issued
            while issued < args.requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                await client.infer("decoder", [inputs[(issued + k) % 16]], outputs=wanted)
                cell.latencies.append(time.perf_counter() - start)
                cell.requests += 1

        start = time.perf_counter()
        try:
            await asyncio.gather(*(one(k) for k in range(concurrency)))
        finally:
            await client.close()
        cell.seconds = time.perf_counter() - start
        return cell

    def sample() -> float:
        cell = asyncio.run(load())
        cells.append(cell)
        return cell.seconds / cell.requests

    return sample, cells


def swap_rows(
    onnx_dir: Path,
    model: Path,
    work: Path,
    latent: int,
    extra: Sequence[str],
    args: argparse.Namespace,
) -> bool:
    """Latency while a re-export is swapped in, against a quiet period (bench/serve_swap.py)."""
    from serve_swap import swap_report

    def serve(folder: Path, *options: str) -> AbstractContextManager[Server]:
        return running(lambda: start_vae_serve(folder, *extra, *options))

    return swap_report(onnx_dir, model, work, latent, serve, args)


def has_option(option: str) -> bool:
    help_text = subprocess.run([str(BIN / "vae-serve"), "--help"], capture_output=True, text=True)
    return option in help_text.stdout


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model.pt (default: random weights, seed size)")
    parser.add_argument("--onnx-dir", type=Path, help="its export (default: exported here)")
    parser.add_argument("--pairs", type=int, default=5, help="alternating pairs per cell (>= 5)")
    parser.add_argument("--requests", type=int, default=1000, help="at most, per sample")
    parser.add_argument("--seconds", type=float, default=2.0, help="at most, per sample")
    parser.add_argument("--kserve-venv", type=Path, help="where KServe is (installed if absent)")
    parser.add_argument("--skip", default="", help="comma-separated: kserve, stack, reference")
    parser.add_argument(
        "--grpc", action="store_true", help="gRPC beside HTTP (vae-serve --grpc-port)"
    )
    parser.add_argument("--swap", action="store_true", help="latency during a model swap")
    parser.add_argument("--serve-args", default="", help="extra vae-serve options")
    parser.add_argument(
        "--quick", action="store_true", help="seconds, to check the script: --grpc/--swap only"
    )
    args = parser.parse_args(argv)
    if args.quick:  # not a measurement: 5 short pairs, no KServe, h11 or reference columns
        args.pairs, args.seconds, args.requests = 5, 1.0, 300
        args.skip = "kserve,stack,reference"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print_machine("vae-serve against its peers")
    extra = shlex.split(args.serve_args)
    if args.grpc and not has_option("--grpc-port"):
        raise NotAvailable("gRPC beside HTTP: vae-serve --grpc-port is not available in this build")
    if args.swap and not has_option("--model-control"):
        raise NotAvailable(
            "latency during a model swap: vae-serve --model-control is not available in this build"
        )
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        model, onnx_dir = prepare_model(args, Path(tmp))
        onnx = onnx_dir / "decoder.onnx"
        from vae_runtime.session import Decoder

        latent = Decoder.load(onnx).latent_dim
        grpc = ("--grpc-port", "0") if args.grpc else ()
        with running(lambda: start_vae_serve(onnx_dir, *extra, *grpc)) as ours:
            check_v2(ours, onnx)
            if "kserve" not in skip:
                python = kserve_python(args)
                started = time.perf_counter()
                with running(lambda: start_kserve(python, onnx)) as kserve:
                    print(f"KServe listening after {time.perf_counter() - started:.2f} s")
                    check_v2(kserve, onnx)
                    rows = []
                    for batch in BATCHES:
                        for kind in KINDS:
                            reqs = triton_requests(latent, batch, kind == "binary")
                            for c in CONCURRENCY:
                                label = f"{kind} b{batch} c={c}"
                                rows.append(compare(label, ours, kserve, (reqs, reqs), c, args))
                    ok &= report(
                        "vae-serve / KServe: requests/s, p99 (KServe's over ours), median of "
                        "pairs (min-max); target >= 1.5x and p99 > 1x",
                        rows,
                        1.5,
                    )
            if "stack" not in skip:
                with running(
                    lambda: start_vae_serve(onnx_dir, *extra, env={"VAE_SERVE_HTTP": "h11"})
                ) as plain:
                    rows = []
                    for kind in KINDS:
                        reqs = triton_requests(latent, 1, kind == "binary")
                        for c in CONCURRENCY:
                            rows.append(
                                compare(f"{kind} b1 c={c}", ours, plain, (reqs, reqs), c, args)
                            )
                    report("httptools+uvloop / h11+asyncio (the same vae-serve):", rows, None)
            if "reference" not in skip:
                ok &= reference_rows(ours, model, Path(tmp), latent, args)
            if args.grpc:
                report(
                    "gRPC / HTTP (tritonclient's asyncio clients, one vae-serve):",
                    grpc_rows(ours, latent, args),
                    None,
                )
        if args.swap:
            ok &= swap_rows(onnx_dir, model, Path(tmp), latent, extra, args)
    print(f"\nall targets met: {ok}")
    return 0  # a missed target is a figure, not a failure: `make bench` goes on to the next table


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NotAvailable as exc:  # a column this build cannot run: a usage error
        print(exc, file=sys.stderr)
        sys.exit(2)
