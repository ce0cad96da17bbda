"""What the vae-web suite shares: graph folders, built sites, a local static server, Chromium.
conftest.py re-exports the fixtures; tests import the rest from here, never from a conftest
(every test folder has a module of that name).

The browser tests need Debian's Chromium (/usr/bin/chromium, or $VAE_CHROMIUM), driven by
Playwright for Python (Playwright's own browser download is never used), and the pinned
onnxruntime-web (web/vae_web/node_modules, or $VAE_ORT_DIR): `make web-deps` installs both.
Where either is missing they skip with one line saying so, except under CI (CI=true, or
VAE_REQUIRE_BROWSER=1), where that is a failure. Tests that write a site but open no browser
never need either: without the real onnxruntime-web they ship a stand-in made here (three small
files with its version banner), which is all vae-web checks. Every server binds 127.0.0.1 on a
free port and is stopped by its fixture.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_graphs, shared
from runtime_graphs import build_decoder, build_encoder, quantize, write_manifest

from vae_runtime.errors import VaeError
from vae_web.build import ORT_DIR_ENV, ORT_FILES, ORT_WEB_VERSION, build_site, find_ort

CHROMIUM = Path(os.environ.get("VAE_CHROMIUM") or "/usr/bin/chromium")
# Under CI the browser tests must run: a missing browser there is a missing install step.
REQUIRE_BROWSER = os.environ.get("CI", "").lower() in ("1", "true") or bool(
    os.environ.get("VAE_REQUIRE_BROWSER")
)
ARTEFACTS_ENV = "VAE_TEST_ARTEFACTS"  # where the page's screenshot goes (default: a temp folder)
LATENT = 20  # the seed's latent size; the graphs are 784-400-20 like the real model


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; with `isolate`, the two headers that make the page cross-origin isolated."""

    isolate = False
    extensions_map: ClassVar[dict[str, str]] = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".js": "text/javascript",
    }

    def end_headers(self) -> None:
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def serve(folder: Path, *, isolate: bool) -> Iterator[str]:
    """Serve `folder` on 127.0.0.1 (a free port) until the block ends; yields the base URL."""
    handler = type("Handler", (_Handler,), {"isolate": isolate})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fake_ort(folder: Path, version: str = ORT_WEB_VERSION) -> Path:
    """A stand-in for onnxruntime-web's dist/ folder: its three files, each only the version
    banner `find_ort` reads. Enough to write a site; a browser could not run it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ORT_FILES:
        (folder / name).write_bytes(f"/*!\n * ONNX Runtime Web v{version}\n */\n".encode())
    return folder


@pytest.fixture(scope="session")
def real_ort() -> Path | None:
    """The real onnxruntime-web files where installed (vae-web's own lookup), else None."""
    try:
        return find_ort()
    except VaeError:
        return None


@pytest.fixture(scope="session")
def ort_files(tmp_path_factory: pytest.TempPathFactory, real_ort: Path | None) -> Path:
    """What the sites are written with: the real onnxruntime-web, else the stand-in."""
    return real_ort or fake_ort(tmp_path_factory.mktemp("fake-ort") / "dist")


@pytest.fixture(autouse=True)
def _ort_dir(monkeypatch: pytest.MonkeyPatch, ort_files: Path) -> None:
    """Every test's vae-web finds `ort_files` through $VAE_ORT_DIR (tests of the lookup itself
    remove it)."""
    monkeypatch.setenv(ORT_DIR_ENV, str(ort_files))


@pytest.fixture(scope="session")
def web_graphs(tmp_path_factory: pytest.TempPathFactory, make_digits: Any) -> dict[str, Path]:
    """Export-like folders: `pair` (decoder + encoder, latent 20, manifest), `pair2` (latent 2,
    for the map), `decoder_only`, and `int8` (pair's graphs quantised, as vae-export writes
    them: decoder.int8.onnx, encoder.int8.onnx, listed in the manifest with their precision)."""
    images, labels = make_digits(64, 3)
    templates = np.stack([images[np.argmax(labels == d)] for d in range(10)])
    root = tmp_path_factory.mktemp("web-graphs")
    folders = {name: root / name for name in ("pair", "pair2", "decoder_only", "int8")}
    for folder in folders.values():
        folder.mkdir()
    for name, latent, hidden in (("pair", LATENT, 400), ("pair2", 2, 64)):
        onnx.save(
            build_decoder(latent, hidden, templates=templates), folders[name] / "decoder.onnx"
        )
        onnx.save(build_encoder(latent, hidden), folders[name] / "encoder.onnx")
        write_manifest(folders[name], "decoder.onnx", "encoder.onnx", latent_dim=latent)
    onnx.save(
        build_decoder(LATENT, 400, templates=templates), folders["decoder_only"] / "decoder.onnx"
    )
    _int8_copy(folders["pair"], folders["int8"])
    return folders


REAL_MODEL = {"hidden_dim": 32, "latent_dim": 6}  # small, and not the hand-built graphs' 20


@pytest.fixture(scope="session")
def real_export(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """The folder of a real `vae-export`: `vae-train --epochs 1` on the suite's synthetic IDX
    folder (512 images) with a small model, then `vae-export model.pt`, both as a user runs
    them (the installed console scripts, as tests/test_end_to_end.py does)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("vae-train needs torch: pip install -e '.[train]'")
    folder = tmp_path_factory.mktemp("real-export")
    bin_dir = Path(sys.executable).parent
    sizes = [f"--{k.replace('_', '-')}={v}" for k, v in REAL_MODEL.items()]
    for command in (
        ["vae-train", "--epochs=1", *sizes, f"--data-dir={mnist_dir}", "--quiet"],
        ["vae-export", "model.pt", "--quiet"],
    ):
        proc = subprocess.run(
            [str(bin_dir / command[0]), *command[1:]],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command[0]} exited {proc.returncode}: {proc.stderr}"
    return folder


def _int8_copy(source: Path, target: Path) -> None:
    """fp32 + int8 graphs beside one manifest, as `vae-export --precision fp32,int8` writes
    them: `vae.precision` int8 in the metadata and the precision in the manifest entry."""
    from vae_runtime.contract import FileEntry, Manifest, graph_file

    files = {}
    for role in ("decoder", "encoder"):
        fp32 = target / graph_file(role)
        fp32.write_bytes((source / graph_file(role)).read_bytes())
        int8 = quantize(onnx.load(fp32), target / graph_file(role, "int8"))
        files[fp32.name] = FileEntry.of(fp32.read_bytes(), role)
        files[int8.name] = FileEntry.of(int8.read_bytes(), role, "int8", {"pixel_max_abs": 0.02})
    manifest = Manifest(files=files, latent_dim=LATENT, details={"training": {"epochs": 3}})
    (target / "manifest.json").write_bytes(manifest.to_bytes())


@pytest.fixture(scope="session")
def sites(
    tmp_path_factory: pytest.TempPathFactory, web_graphs: dict[str, Path], ort_files: Path
) -> dict[str, Path]:
    """One built site per graph folder (int8 with --precision int8)."""
    root = tmp_path_factory.mktemp("sites")
    built = {}
    for name, folder in web_graphs.items():
        precision = "int8" if name == "int8" else "fp32"
        build_site(folder, root / name, precision=precision, ort_dir=ort_files)
        built[name] = root / name
    return built


@pytest.fixture(scope="session")
def browser(real_ort: Path | None) -> Iterator[Any]:
    """Debian's Chromium under Playwright (headless; --no-sandbox as tests run as root), for
    pages that need the real onnxruntime-web: skipped, saying how to get them, where any is
    missing; failed instead under CI."""
    missing = [] if CHROMIUM.exists() else [f"Chromium ({CHROMIUM})"]
    if real_ort is None:
        missing.append(f"onnxruntime-web {ORT_WEB_VERSION} (web/vae_web/node_modules)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    if missing:
        reason = f"browser tests need {' and '.join(missing)}: run `make web-deps`"
        if REQUIRE_BROWSER:
            pytest.fail(f"{reason} (CI or VAE_REQUIRE_BROWSER: they must run here)")
        pytest.skip(reason)

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


class PageWatch:
    """A page with every console error, page error and failed request recorded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}")
        )
        page.on(
            "response",
            lambda r: (
                self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
            ),
        )
        self.external: list[str] = []
        page.route(
            lambda url: not url.startswith(("http://127.0.0.1:", "data:", "blob:")),
            lambda route: (self.external.append(route.request.url), route.abort()),
        )

    def open(self, url: str, timeout_ms: float = 30_000) -> str:
        """Load `url`, wait until the page says ready or failed; returns that state."""
        self.page.goto(url)
        self.page.wait_for_function(
            "['ready', 'failed'].includes(document.body.dataset.state)", timeout=timeout_ms
        )
        return str(self.page.evaluate("document.body.dataset.state"))


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., PageWatch]]:
    """open_page(init_script=None) -> a PageWatch on a fresh context; closed afterwards."""
    contexts = []

    def make(init_script: str | None = None) -> PageWatch:
        context = browser.new_context(viewport={"width": 1000, "height": 900})
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        return PageWatch(context.new_page())

    yield make
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder test artefacts (the page's screenshot) are written to."""
    folder = Path(os.environ.get(ARTEFACTS_ENV) or tmp_path_factory.mktemp("artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
