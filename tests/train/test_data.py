"""MNIST data for training: folder layouts, and the download path against local HTTP servers
on 127.0.0.1 (never the network). The IDX format itself is tested with the runtime."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import idx_bytes

from vae_runtime.errors import DataError
from vae_runtime.idx import write_idx
from vae_train.data import (
    DATA_DIR_ENV,
    TEST_IMAGES,
    TRAIN_IMAGES,
    default_cache_dir,
    download,
    load_mnist,
)

# ---------------------------------------------------------------- named folders


def _write_images(folder: Path, n_train: int, n_test: int, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    write_idx(folder / f"{TRAIN_IMAGES}{suffix}", rng.integers(0, 256, (n_train, 28, 28), np.uint8))
    write_idx(folder / f"{TEST_IMAGES}{suffix}", rng.integers(0, 256, (n_test, 28, 28), np.uint8))


@pytest.mark.parametrize("layout", ["gzip", "raw", "torchvision"])
def test_named_folder_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "data"
    where = folder / "MNIST" / "raw" if layout == "torchvision" else folder
    _write_images(where, 7, 3, gz=layout != "raw")
    data = load_mnist(folder, mirrors=[])
    assert data.train.shape == (7, 28, 28)
    assert data.test.shape == (3, 28, 28)
    assert data.train.dtype == np.uint8


def test_named_folder_is_read_without_checksums(mnist_dir: Path) -> None:
    # the synthetic set is nothing like the official files: only headers are checked
    data = load_mnist(mnist_dir, mirrors=[])
    assert data.train.shape == (512, 28, 28)
    assert data.source == str(mnist_dir)


def test_named_folder_without_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"no {TRAIN_IMAGES}.* --data-dir"):
        load_mnist(tmp_path, mirrors=[])


def test_missing_named_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # the library never reads it
    with pytest.raises(DataError, match=r"data folder .*nope does not exist"):
        load_mnist(tmp_path / "nope", mirrors=[])


def test_images_of_wrong_shape(tmp_path: Path) -> None:
    write_idx(tmp_path / f"{TRAIN_IMAGES}.gz", np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / f"{TEST_IMAGES}.gz", np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"\[4, 32, 32\], expected \[N, 28, 28\]"):
        load_mnist(tmp_path, mirrors=[])


def test_cache_dir_follows_xdg(tmp_path: Path) -> None:
    assert default_cache_dir(str(tmp_path)) == tmp_path / "mnist-vae" / "mnist"
    assert default_cache_dir(None) == Path.home() / ".cache" / "mnist-vae" / "mnist"
    assert default_cache_dir("") == default_cache_dir(None)


# ---------------------------------------------------------------- downloads from 127.0.0.1

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Server:
    """An HTTP server in a thread; `routes[path]` answers each request, unknown paths get 404."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[str] = []
        self.release = threading.Event()  # lets stalled handlers finish at teardown
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}/"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _body(payload: bytes) -> Route:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    return answer


NAME = f"{TRAIN_IMAGES}.gz"


@pytest.fixture(scope="module")
def good_gz() -> bytes:
    return gzip.compress(idx_bytes(np.full((3, 28, 28), 7, np.uint8)), mtime=0)


def _md5(data: bytes) -> dict[str, str]:
    return {NAME: hashlib.md5(data).hexdigest()}


def test_download_success(server: _Server, tmp_path: Path, good_gz: bytes) -> None:
    server.routes[f"/a/{NAME}"] = _body(good_gz)
    path = download(NAME, tmp_path / "cache", mirrors=[server.url("a")], checksums=_md5(good_gz))
    assert path.read_bytes() == good_gz
    assert sorted(p.name for p in path.parent.iterdir()) == [NAME]  # no temp file left


def test_failing_mirrors_fall_through_to_a_good_one(
    server: _Server, tmp_path: Path, good_gz: bytes
) -> None:
    def stall(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(good_gz)))
        handler.end_headers()
        handler.wfile.write(good_gz[:10])
        handler.wfile.flush()
        server.release.wait(10)  # never sends the rest: the client's timeout must fire

    server.routes[f"/corrupt/{NAME}"] = _body(good_gz[:-5] + b"xxxxx")
    server.routes[f"/stall/{NAME}"] = stall
    server.routes[f"/good/{NAME}"] = _body(good_gz)
    mirrors = [server.url(m) for m in ("missing", "corrupt", "stall", "good")]
    messages: list[str] = []
    path = download(
        NAME, tmp_path, mirrors=mirrors, checksums=_md5(good_gz), timeout=0.5, log=messages.append
    )
    assert path.read_bytes() == good_gz
    assert [h.split("/")[1] for h in server.hits] == ["missing", "corrupt", "stall", "good"]
    assert len(messages) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]


def test_bad_gzip_with_matching_checksum_is_refused(server: _Server, tmp_path: Path) -> None:
    junk = b"\x1f\x8b\x08\x00 this is not a gzip stream"
    server.routes[f"/a/{NAME}"] = _body(junk)
    with pytest.raises(DataError, match="bad gzip data"):
        download(NAME, tmp_path, mirrors=[server.url("a")], checksums=_md5(junk))
    assert list(tmp_path.iterdir()) == []


def test_all_mirrors_failing_gives_one_line_with_fixes(
    server: _Server, tmp_path: Path, good_gz: bytes
) -> None:
    server.routes[f"/b/{NAME}"] = _body(b"wrong bytes")
    mirrors = [server.url("a"), server.url("b")]
    with pytest.raises(DataError) as info:
        download(NAME, tmp_path, mirrors=mirrors, checksums=_md5(good_gz))
    message = str(info.value)
    assert "\n" not in message
    assert f"{mirrors[0]}{NAME} (HTTP 404)" in message
    assert f"{mirrors[1]}{NAME} (checksum mismatch" in message
    assert "--data-dir" in message
    assert DATA_DIR_ENV in message
    assert list(tmp_path.iterdir()) == []


def test_refused_connection(tmp_path: Path, good_gz: bytes) -> None:
    s = _Server()
    url = s.url("gone")
    s.close()  # nothing listens on that port any more
    with pytest.raises(DataError, match="refused"):
        download(NAME, tmp_path, mirrors=[url], checksums=_md5(good_gz), timeout=2)


def test_load_mnist_fills_the_cache_once(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    payloads = {}
    for name, n in ((TRAIN_IMAGES, 6), (TEST_IMAGES, 2)):
        payloads[f"{name}.gz"] = gzip.compress(idx_bytes(np.ones((n, 28, 28), np.uint8)))
        server.routes[f"/m/{name}.gz"] = _body(payloads[f"{name}.gz"])
    checksums = {k: hashlib.md5(v).hexdigest() for k, v in payloads.items()}
    cache = tmp_path / "cache"
    first = load_mnist(cache_dir=cache, mirrors=[server.url("m")], checksums=checksums)
    assert (first.train.shape, first.test.shape) == ((6, 28, 28), (2, 28, 28))
    assert len(server.hits) == 2
    load_mnist(cache_dir=cache, mirrors=[server.url("m")], checksums=checksums)
    assert len(server.hits) == 2  # served from the cache the second time
