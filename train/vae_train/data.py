"""MNIST for training: find it in a named folder, or download it once into a cache, into memory.

A folder the user names (`data_dir`; the command line also reads VAE_DATA_DIR) is read as it is:
IDX headers are checked, checksums are not, so partial sets, Fashion-MNIST or KMNIST work too.
Without one, the cache folder is used and filled from public mirrors in turn; a download is
accepted only after its official MD5 and its gzip stream check out.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_runtime.errors import DataError, OutputError
from vae_runtime.fileio import Outputs, naming
from vae_runtime.idx import IMAGES_MAGIC, read_idx

DATA_DIR_ENV = "VAE_DATA_DIR"
TRAIN_IMAGES = "train-images-idx3-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"

# Tried in order over https; each serves the four official gzip files under these names.
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# The official MD5s of the gzip files (what yann.lecun.com published).
OFFICIAL_MD5: Mapping[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
DOWNLOAD_TIMEOUT_S = 30.0
_MAX_DOWNLOAD_BYTES = 64 << 20  # the largest official file is 9.9 MB; more means a wrong URL
# torchvision's datasets leave their files in <root>/<Name>/raw/.
_TORCHVISION_DIRS = ("MNIST", "FashionMNIST", "KMNIST")


@dataclass(frozen=True)
class MnistImages:
    """The training and test images, each one uint8 array (N, 28, 28), and where they came from."""

    train: np.ndarray
    test: np.ndarray
    source: str


def default_cache_dir(xdg_cache_home: str | None = None) -> Path:
    """Where downloads go: <xdg_cache_home>/mnist-vae/mnist, else ~/.cache/mnist-vae/mnist (the
    command line passes $XDG_CACHE_HOME)."""
    base = Path(xdg_cache_home) if xdg_cache_home else Path.home() / ".cache"
    return base / "mnist-vae" / "mnist"


def find_images(folder: Path, name: str) -> Path | None:
    """The IDX file `name` (gzip or raw) in `folder` or in torchvision's `folder/<Set>/raw/`."""
    for directory in (folder, *(folder / d / "raw" for d in _TORCHVISION_DIRS)):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    return None


def locate_mnist(data_dir: Path | str | None, cache_dir: Path | None = None) -> list[Path]:
    """The training and test image files that `load_mnist` will read: in `data_dir` (which must
    hold both), else in `cache_dir` (default `default_cache_dir()`), where they may not exist
    yet (then they are downloaded). Raises DataError for a named folder that lacks them."""
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist or is not a folder")
        paths = []
        for name in (TRAIN_IMAGES, TEST_IMAGES):
            path = find_images(folder, name)
            if path is None:
                raise DataError(
                    f"{folder}: no {name}[.gz] in it (nor in its MNIST/raw/); "
                    "point --data-dir at a folder holding the MNIST IDX files"
                )
            paths.append(path)
        return paths
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    return [folder / f"{name}.gz" for name in (TRAIN_IMAGES, TEST_IMAGES)]


def load_mnist(
    data_dir: Path | str | None = None,
    *,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    checksums: Mapping[str, str] = OFFICIAL_MD5,
    cache_dir: Path | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> MnistImages:
    """Load MNIST's training and test images into memory.

    `data_dir` names a folder that is read as it is. Without one, the images come from
    `cache_dir` (default `default_cache_dir()`), downloaded there first from `mirrors` if
    missing. Raises DataError with one line naming what is missing and how to fix it.
    """
    train_path, test_path = locate_mnist(data_dir, cache_dir)
    if data_dir is None:
        for path in (train_path, test_path):
            if not path.is_file():
                download(
                    path.name,
                    path.parent,
                    mirrors=mirrors,
                    checksums=checksums,
                    timeout=timeout,
                    log=log,
                )
    source = str(data_dir if data_dir is not None else train_path.parent)
    return _read_pair(train_path, test_path, source)


def _read_pair(train_path: Path, test_path: Path, source: str) -> MnistImages:
    train, test = (read_idx(p, IMAGES_MAGIC) for p in (train_path, test_path))
    for path, images in ((train_path, train), (test_path, test)):
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] == 0:
            raise DataError(
                f"{path}: images of shape {list(images.shape)}, expected [N, 28, 28] with N >= 1"
            )
    return MnistImages(train=train, test=test, source=source)


def download(
    filename: str,
    folder: Path,
    *,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    checksums: Mapping[str, str] = OFFICIAL_MD5,
    timeout: float = DOWNLOAD_TIMEOUT_S,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch `filename` into `folder` from the first mirror that serves it intact.

    Each attempt streams into a staged file beside the target (`fileio.Outputs`); the file is
    moved into place only after its MD5 matches `checksums[filename]` and its gzip stream
    decompresses. Any failure (HTTP error, timeout, refused connection, wrong checksum, bad gzip)
    moves on to the next mirror; a full disk or an unwritable cache stops at once.
    """
    if not mirrors:
        raise DataError("no download mirrors given; pass --data-dir or set VAE_DATA_DIR")
    expected = checksums.get(filename)
    if expected is None:
        raise DataError(f"no known checksum for {filename}; cannot verify a download")
    target = Path(folder) / filename
    failures = []
    with Outputs([target], force=True, create_dirs=True) as outputs:  # the cache's own file
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            if log is not None:
                log(f"downloading {url}")
            try:
                _fetch_verified(url, outputs, target, expected, timeout)
                outputs.commit()
                return target
            except _DownloadFailed as exc:
                failures.append(f"{url} ({exc})")
    raise DataError(
        f"cannot download MNIST ({filename}); tried {'; '.join(failures)}. "
        f"Fix: download the IDX files yourself and pass --data-dir FOLDER, "
        f"or set {DATA_DIR_ENV}=FOLDER"
    )


class _DownloadFailed(Exception):
    """One mirror failed; the message says how (kept short, it goes into a one-line summary)."""


def _fetch_verified(url: str, outputs: Outputs, target: Path, md5: str, timeout: float) -> None:
    digest = hashlib.md5()
    size = 0
    out = outputs.open(target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 16):
                size += len(block)
                if size > _MAX_DOWNLOAD_BYTES:
                    raise _DownloadFailed(f"more than {_MAX_DOWNLOAD_BYTES >> 20} MB")
                digest.update(block)
                with naming(target):
                    out.write(block)
    except urllib.error.HTTPError as exc:
        raise _DownloadFailed(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise _DownloadFailed(_reason(exc.reason)) from None
    except OutputError:
        raise
    except (TimeoutError, OSError) as exc:  # a read that stalls past the timeout, a reset
        raise _DownloadFailed(_reason(exc)) from None
    with naming(target):
        out.close()
    if digest.hexdigest() != md5:
        raise _DownloadFailed(f"checksum mismatch: md5 {digest.hexdigest()}, expected {md5}")
    try:
        with gzip.open(outputs.staged_path(target), "rb") as f:
            while f.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise _DownloadFailed(f"bad gzip data: {exc}") from None


def binarize(images: np.ndarray, seed: int) -> np.ndarray:
    """One fixed, seeded binarisation (the literature's "statically binarised" test set): each
    pixel becomes 255 with probability intensity / 255, else 0; uint8 like the input, same shape.
    vae-eval --binarize, and vae-train --binarize for its test set, both use this."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB1]))  # not the latents' stream
    out = np.empty(images.shape, dtype=np.uint8)
    rows = images.reshape(images.shape[0], -1)
    flat = out.reshape(rows.shape)
    for start in range(0, rows.shape[0], 4096):  # bounded memory for any N
        chunk = rows[start : start + 4096]
        u = rng.random(chunk.shape, dtype=np.float32)
        flat[start : start + 4096] = np.where(u * 255.0 < chunk, 255, 0)
    return out


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
