"""vae-web's page in Chromium against onnxruntime in Python, on the same machine, in one run.

Measures: navigation to the first decoded grid on a warm local server (median of --loads page
loads, each in a fresh browser context); decoder latency per call at batch 1 and 25 (median and
p99 of --runs calls) inside the page's worker (onnxruntime-web's wasm backend, session.run) and as
the page sees it (a round trip to the worker), beside `Decoder.decode` in Python. The page is
served with COOP/COEP (two wasm threads) unless --no-isolate.

    python bench/web_speed.py --onnx-dir out            # after vae-export
    python bench/web_speed.py --onnx-dir out --precision int8
    python bench/web_speed.py --onnx-dir out --quick    # 50 calls, 1 load, 5 pairs: a check

The page's worker and Python run in alternating pairs (bench/measure.py), --runs calls per
sample: each pair gives the ratio of the two mean times per call (worker over Python; the page's
clock ticks in 0.1 ms without COOP/COEP, so its per-call medians can read 0 there), and the
figure is the median of --pairs such ratios with their spread; the per-call medians, p99s and
means are medians over the pairs.

Needs Debian's Chromium at /usr/bin/chromium and web/vae_web/node_modules (make web-deps).
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from measure import MIN_PAIRS, Spread, alternate_samples, print_machine, spread

from vae_runtime.errors import VaeError
from vae_runtime.session import Decoder
from vae_web.build import build_site


class _Handler(http.server.SimpleHTTPRequestHandler):
    isolate = True

    def end_headers(self) -> None:
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serve(folder: Path, isolate: bool) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"isolate": isolate})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def stats(ms: list[float]) -> tuple[float, float, float]:
    """(median, p99, mean) in milliseconds. The mean is what the ratio compares: without
    cross-origin isolation the page's clock ticks in 0.1 ms, so a fast call's median reads 0
    there, while the mean of many calls (the clock's jitter spreads the rounding) does not."""
    return statistics.median(ms), float(np.percentile(ms, 99)), statistics.fmean(ms)


Stats = tuple[float, float, float]


def _medians(pairs: list[Stats]) -> Stats:
    """Each of (median, p99, mean), its median over the pairs."""
    m, p, a = (spread([s[i] for s in pairs]).median for i in range(3))
    return m, p, a


def python_times(decoder: Decoder, batch: int, runs: int) -> list[float]:
    z = np.sin(np.arange(batch * decoder.latent_dim, dtype=np.float32)).reshape(batch, -1)
    for _ in range(20):
        decoder.decode(z)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        decoder.decode(z)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=Path("out"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--no-isolate", action="store_true", help="serve without COOP/COEP")
    parser.add_argument("--pairs", type=int, default=7, help="alternating pairs (>= 5)")
    parser.add_argument("--quick", action="store_true", help="50 calls, 1 load: a check")
    args = parser.parse_args()
    if args.pairs < MIN_PAIRS:
        parser.error(f"--pairs must be at least {MIN_PAIRS}")
    if args.quick:
        args.runs, args.loads, args.pairs = 50, 1, MIN_PAIRS
    print_machine("bench/web_speed.py" + (" --quick: not a figure" if args.quick else ""))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        print(build_site(args.onnx_dir, site, precision=args.precision))
        decoder = Decoder.load(
            site
            / ("decoder.onnx" if args.precision == "fp32" else f"decoder.{args.precision}.onnx")
        )
        with serve(site, not args.no_isolate) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox"]
            )
            first_grid, sessions = [], []
            for _ in range(args.loads):
                context = browser.new_context()
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("document.body.dataset.state === 'ready'")
                timings = page.evaluate("vaeTest.timings")
                first_grid.append(timings["firstGrid"])
                sessions.append(timings["sessions"])
                threads = page.evaluate("document.body.dataset.threads")
                if _ < args.loads - 1:
                    context.close()
            warm = []  # reloads in the last context: the browser's cache holds the files
            for _ in range(args.loads):
                page.reload()
                page.wait_for_function("document.body.dataset.state === 'ready'")
                warm.append(page.evaluate("vaeTest.timings")["firstGrid"])
            rows: list[tuple[int, Stats, Stats, Stats, Spread]] = []
            for batch in (1, 25):
                seen: dict[str, list[Stats]] = {"page": [], "trip": [], "py": []}

                def py(batch: int = batch, seen: dict[str, Any] = seen) -> float:
                    seen["py"].append(stats(python_times(decoder, batch, args.runs)))
                    return float(seen["py"][-1][2])

                def worker(batch: int = batch, seen: dict[str, Any] = seen) -> float:
                    seen["page"].append(
                        stats(page.evaluate(f"vaeTest.bench({args.runs}, {batch})"))
                    )
                    seen["trip"].append(
                        stats(page.evaluate(f"vaeTest.roundTrips({args.runs}, {batch})"))
                    )
                    return float(seen["page"][-1][2])

                c = alternate_samples(py, worker, args.pairs, warmup=0, label=f"batch {batch}")
                page_s, trip_s, py_s = (_medians(seen[k]) for k in ("page", "trip", "py"))
                rows.append((batch, page_s, trip_s, py_s, c.ratio))
            browser.close()

    print(
        f"\nChromium {browser.version}, onnxruntime-web wasm, {threads} thread(s); "
        f"{decoder.precision} decoder, latent {decoder.latent_dim}; {args.runs} calls each"
    )
    print(
        f"reload (browser cache warm) -> first grid: median {statistics.median(warm):.0f} ms "
        f"({', '.join(f'{t:.0f}' for t in warm)})"
    )
    print(
        f"fresh context (cold cache) -> first grid: "
        f"median {statistics.median(first_grid):.0f} ms "
        f"(sessions ready at {statistics.median(sessions):.0f} ms; {args.loads} loads: "
        f"{', '.join(f'{t:.0f}' for t in first_grid)})"
    )
    print(
        f"\nper call, median / p99 / mean of {args.runs} calls, each a median over "
        f"{args.pairs} pairs; worker / Python: the pairs' ratios of the mean per call, their "
        "median (min-max, IQR)"
    )
    print(
        "| batch | page worker run (median / p99 / mean) | page round trip (median / p99) "
        "| Python onnxruntime (median / p99 / mean) | worker / Python, mean per call |"
    )
    print("| --- | --- | --- | --- | --- |")
    for batch, inside, trip, native, ratio in rows:
        print(
            f"| {batch} | {inside[0]:.3f} / {inside[1]:.3f} / {inside[2]:.3f} ms "
            f"| {trip[0]:.3f} / {trip[1]:.3f} ms "
            f"| {native[0]:.3f} / {native[1]:.3f} / {native[2]:.3f} ms | {ratio.show(2, 'x')} |"
        )


if __name__ == "__main__":
    try:
        main()
    except VaeError as exc:  # a missing onnxruntime-web or browser, a bad folder: one line
        raise SystemExit(f"web_speed.py: {exc}") from None
