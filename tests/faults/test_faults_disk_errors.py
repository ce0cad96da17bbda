"""Injected write faults: EIO at every write primitive in turn (the outputs, and vae-train's
download into its cache), and files that vanish or change between check and use.

Each ends in one line naming the user's path and the reason, exit 1, every file as it was, no
staging file or folder left. No test opens a URL: downloads read a fake mirror."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from disk import (
    CACHED,
    DEC,
    ENC,
    EXPORT_FILES,
    STAGING,
    TRAIN,
    TRAIN_FILES,
    TRAIN_IMAGES,
    _images,
    expect_fault,
    invoke,
    leftovers,
    populate,
    words,
    write_old,
)
from harness import Server, Tiny
from helpers import expect_error, tree
from typer.testing import Result

from vae_runtime import fileio, tasks

# -- EIO at the Nth write primitive, every N -----------------------------------------


class Injector:
    """Counts the write primitives the commands' outputs go through and fails call `fail_at`
    with EIO: Path.write_bytes/mkdir, the streams fileio opens (write, close), and fileio's
    os.posix_fallocate/link/replace and tempfile.mkdtemp."""

    def __init__(self, fail_at: int | None) -> None:
        self.fail_at = fail_at
        self.calls: list[str] = []

    def hit(self, what: str) -> None:
        self.calls.append(what)
        if len(self.calls) == self.fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        injector = self

        def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
            def faulty(*args: Any, **kwargs: Any) -> Any:
                injector.hit(name)
                return function(*args, **kwargs)

            return faulty

        class Stream:
            def __init__(self, file: IO[bytes]) -> None:
                self._file = file

            def write(self, data: Any) -> int:
                injector.hit("write")
                return self._file.write(data)

            def close(self) -> None:
                if not self._file.closed:
                    injector.hit("close")
                self._file.close()

            def __getattr__(self, name: str) -> Any:
                return getattr(self._file, name)

        class Os:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

        faulty_os = Os()
        for name in ("posix_fallocate", "link", "replace"):
            setattr(faulty_os, name, wrap(name, getattr(os, name)))

        class Tempfile:
            mkdtemp = staticmethod(wrap("mkdtemp", tempfile.mkdtemp))

        monkeypatch.setattr(Path, "write_bytes", wrap("write_bytes", Path.write_bytes))
        monkeypatch.setattr(Path, "mkdir", wrap("mkdir", Path.mkdir))

        def opened(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            stream = open(file, mode, *args, **kwargs)  # noqa: SIM115  (its caller closes it)
            return Stream(stream) if "w" in mode else stream

        monkeypatch.setattr(fileio, "open", opened, raising=False)
        monkeypatch.setattr(fileio, "os", faulty_os)
        monkeypatch.setattr(fileio, "tempfile", Tempfile)


EIO = {  # command line, older outputs; fresh/ and new/ are folders the command makes
    "vae-generate": (
        words(
            f"--force --onnx {DEC} -n 3 --npy fresh/deep/s.npy --images-dir out/imgs -o out/g.png"
        ),
        ("out/g.png", *_images("out/imgs", 2)),
    ),
    "vae-interpolate": (
        words(f"--force --onnx {DEC} --steps 3 --npy out/i.npy --gif out/i.gif -o out/i.png"),
        ("out/i.png", "out/i.gif"),
    ),
    "vae-reconstruct": (
        words(f"--force --encoder {ENC} --decoder {DEC} a.png --npy out/r.npy -o new/r.png"),
        ("out/r.npy",),
    ),
    "vae-train": ((*TRAIN, "--out", "out", "--force"), tuple(f"out/{n}" for n in TRAIN_FILES)),
    "vae-export": (
        words("run/model.pt -o out -q --force"),
        ("out/encoder.onnx", "out/manifest.json"),  # no decoder.onnx yet: a new file in the set
    ),
}
# The line names an output, or a folder the command was making: never a staging name.
NAMED = r"(error: |folder )(out|fresh|new)(/[\w.]+)*(: cannot write it)?: Input/output error$"


@pytest.mark.parametrize("name", list(EIO))
def test_an_io_error_at_any_write_loses_nothing(
    tmp_path: Path,
    tiny: Tiny,
    digits: tuple[bytes, bytes],
    stub_export: None,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """Count the write primitives of a clean run, then fail each of them in turn: the command
    stops in one line naming an output, and every file is as it was."""
    args, old = EIO[name]

    def attempt(fail_at: int | None) -> tuple[Result, Injector, dict[str, bytes | str], Path]:
        root = populate(tmp_path / f"n{fail_at or 0}", tiny, digits)
        monkeypatch.chdir(root)
        write_old(root, old)
        before = tree(root)
        injector = Injector(fail_at)
        with monkeypatch.context() as patches:
            injector.install(patches)
            result = invoke(name, args)
        return result, injector, before, root

    result, clean, _, _ = attempt(None)
    assert result.exit_code == 0, result.stderr
    assert {"mkdtemp", "write_bytes", "replace"} <= set(clean.calls), clean.calls
    for fail_at, what in enumerate(clean.calls, start=1):
        result, _, before, root = attempt(fail_at)
        if what == "link":  # the rollback copy: fileio moves the old file aside instead
            assert result.exit_code == 0, (fail_at, result.stderr)
            assert not leftovers(root) and tree(root) != before
            continue
        line = expect_error(result, 1, NAMED)
        assert tree(root) == before, (fail_at, what, line)


def test_an_io_error_in_a_later_epoch_keeps_the_last_complete_set(
    tmp_path: Path,
    tiny: Tiny,
    digits: tuple[bytes, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vae-train replaces its four files together after every epoch: a fault while the second
    epoch's set is staged (first and last file) or renamed into place (first and last rename)
    leaves the first epoch's complete set (the same bytes a one-epoch run writes, never a mix of
    the two), and one line. (Every single write is swept in the test above.)"""
    from vae_train.checkpoint import load_checkpoint

    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    one, two = ((*TRAIN[:3], str(n), *TRAIN[4:], "--out", "out", "--force") for n in (1, 2))

    def attempt(args: Sequence[str], fail_at: int | None, tag: str) -> tuple[Result, Injector]:
        root = populate(tmp_path / tag, tiny, digits)
        monkeypatch.chdir(root)
        write_old(root, [f"out/{n}" for n in TRAIN_FILES])
        injector = Injector(fail_at)
        with monkeypatch.context() as patches:
            injector.install(patches)
            result = invoke("vae-train", args)
        return result, injector

    result, _ = attempt(one, None, "one")
    assert result.exit_code == 0, result.stderr
    first = {n: (tmp_path / "one" / "out" / n).read_bytes() for n in TRAIN_FILES[1:3]}
    result, clean = attempt(two, None, "two")
    assert result.exit_code == 0, result.stderr
    replaces = [i for i, what in enumerate(clean.calls, start=1) if what == "replace"]
    assert len(replaces) == 2 * len(TRAIN_FILES), clean.calls
    second = range(replaces[len(TRAIN_FILES) - 1] + 1, len(clean.calls) + 1)
    writes = [i for i in second if clean.calls[i - 1] == "write_bytes"]
    renames = [i for i in second if clean.calls[i - 1] == "replace"]
    for fail_at in (writes[0], writes[-1], renames[0], renames[-1]):
        result, _ = attempt(two, fail_at, f"two-{fail_at}")
        expect_error(result, 1, NAMED)
        out = tmp_path / f"two-{fail_at}" / "out"
        assert load_checkpoint(out / "model.pt").epoch == 1, fail_at
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1, fail_at
        assert {n: (out / n).read_bytes() for n in first} == first, fail_at
        assert not leftovers(out.parent)


# -- the one write that is not an output: vae-train's download into its cache -------


def test_a_real_efbig_in_the_download_loses_nothing(
    work: Path, server: Server, payload: Path
) -> None:
    """No data folder: vae-train downloads MNIST (from a fake mirror) into XDG_CACHE_HOME,
    whose folders, and --out's, it makes; the cache file hits EFBIG."""
    before = tree(work)
    result = server.run(
        "vae-train",
        [*TRAIN[2:], "--out", "fresh/run"],
        work,
        fsize=4096,
        env={"XDG_CACHE_HOME": "cache"},
        download=payload,
    )
    expect_fault(result, re.escape(f"cache/{CACHED}"), "cannot write it: File too large")
    assert tree(work) == before


def test_an_io_error_at_any_write_of_the_download_loses_nothing(
    work: Path, payload: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write primitive of the download fails in turn; without a fault the fake mirror's
    bytes fail their checksum. Either way: one line, nothing left, not even the cache folders."""
    data = payload.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(data))
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    args = [*TRAIN[2:], "--out", "fresh/run"]
    before = tree(work)

    def attempt(fail_at: int | None) -> tuple[Result, Injector]:
        injector = Injector(fail_at)
        with monkeypatch.context() as patches:
            injector.install(patches)
            result = invoke("vae-train", args)
        assert tree(work) == before, (fail_at, result.stderr)
        return result, injector

    result, clean = attempt(None)
    expect_error(result, 1, "cannot download MNIST.*checksum mismatch")
    assert {"mkdir", "mkdtemp", "write"} <= set(clean.calls), clean.calls
    for fail_at in range(1, len(clean.calls) + 1):
        result, _ = attempt(fail_at)
        named = r"(error: |folder )(fresh|cache)(/[\w.-]+)*(: cannot write it)?"
        expect_error(result, 1, named + ": Input/output error$")


# -- a file that vanishes between check and use --------------------------------------


def _after_enter(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` once the command's checks have passed and its outputs are entered."""
    enter = fileio.Outputs.__enter__

    def hooked(self: fileio.Outputs) -> fileio.Outputs:
        entered = enter(self)
        action()
        return entered

    monkeypatch.setattr(fileio.Outputs, "__enter__", hooked)


def _before_commit(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run `action` when everything is staged, just before the commit."""
    commit = fileio.Outputs.commit

    def hooked(self: fileio.Outputs) -> None:
        action()
        commit(self)

    monkeypatch.setattr(fileio.Outputs, "commit", hooked)


def _remove_staging(folder: Path) -> Callable[[], None]:
    def remove() -> None:
        for staging in folder.glob(f"{STAGING}*"):
            shutil.rmtree(staging)

    return remove


@dataclass(frozen=True)
class Vanish:
    """`command args`; `hook` ("enter", "commit" or "check_pair") removes `victim`; the line
    must match `pattern`, exit `code`; the tree is as before except for `victim`."""

    command: str
    args: tuple[str, ...]
    hook: str
    victim: str
    pattern: str
    code: int = 1
    old: tuple[str, ...] = ()


VANISH = {
    "decoder-after-checks": Vanish(
        "vae-generate", words(f"--force --onnx {DEC} -o fresh/g.png"), "enter", DEC, re.escape(DEC)
    ),
    "input-image-of-reconstruct": Vanish(
        "vae-reconstruct",
        words(f"--force --encoder {ENC} --decoder {DEC} a.png b.png -o fresh/r.png"),
        "check_pair",
        "b.png",
        "b.png",
    ),
    "input-image-of-interpolate": Vanish(
        "vae-interpolate",
        words(f"--force --onnx {DEC} --encoder {ENC} a.png b.png -o out/i.png --no-gif"),
        "check_pair",
        "a.png",
        "a.png",
        old=("out/i.png",),
    ),
    "training-data": Vanish(
        "vae-train",
        (*TRAIN, "--out", "fresh/run"),
        "enter",
        TRAIN_IMAGES,
        "train-images-idx3-ubyte",
    ),
    "resumed-checkpoint": Vanish(
        "vae-train",
        (*TRAIN[:3], "2", *TRAIN[4:], "--out", "fresh/run", "--resume", "run/model.pt"),
        "enter",
        "run/model.pt",
        "run/model.pt",
    ),
    "exported-checkpoint": Vanish(
        "vae-export",
        words("run/model.pt -o out -q --force"),
        "enter",
        "run/model.pt",
        "run/model.pt",
        old=("out/manifest.json",),
    ),
    "output-folder": Vanish(
        "vae-generate",
        words(f"--force --onnx {DEC} --npy out/s.npy -o out/g.png"),
        "enter",
        "out",
        re.escape("out/s.npy") + ": cannot write it: No such file or directory",
    ),
    "staged-files": Vanish(
        "vae-export",
        words("run/model.pt -o out -q --force"),
        "commit-staging",
        "out",
        re.escape("out/encoder.onnx") + ": cannot write it: No such file or directory",
        old=("out/encoder.onnx", "out/decoder.onnx", "out/manifest.json"),
    ),
}


@pytest.mark.parametrize("name", list(VANISH))
def test_a_file_that_vanishes_between_check_and_use(
    work: Path, stub_export: None, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """An input, an output folder or the staged files vanish after the checks (a hook on a
    function the command calls in between): one line, exit 1, nothing else changed."""
    case = VANISH[name]
    write_old(work, case.old)
    victim = work / case.victim

    def remove() -> None:
        shutil.rmtree(victim) if victim.is_dir() else victim.unlink()

    if case.hook == "enter":
        _after_enter(monkeypatch, remove)
    elif case.hook == "commit-staging":
        _before_commit(monkeypatch, _remove_staging(victim))
    else:
        check_pair = tasks.check_pair

        def hooked(*args: Any) -> None:
            check_pair(*args)
            remove()

        monkeypatch.setattr(tasks, "check_pair", hooked)
    before = tree(work)
    result = invoke(case.command, case.args)
    expect_error(result, case.code, case.pattern)
    after = tree(work)
    if case.hook != "commit-staging":
        before = {k: v for k, v in before.items() if not (work / k).is_relative_to(victim)}
    assert after == before
    assert not leftovers(work)


def test_an_output_swapped_for_a_link_before_the_commit_is_not_followed(
    work: Path, stub_export: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vae-export's manifest (renamed last) becomes a symlink to someone else's file once the
    graphs are staged: nothing is replaced (the graphs already renamed are put back), the link
    and the file it points to are untouched."""
    write_old(work, [f"out/{n}" for n in EXPORT_FILES])
    manifest = work / "out" / "manifest.json"

    def swap() -> None:
        manifest.unlink()
        manifest.symlink_to(work / "other.txt")

    _before_commit(monkeypatch, swap)
    before = tree(work)
    result = invoke("vae-export", ["run/model.pt", "-o", "out", "-q", "--force"])
    expect_error(result, 2, "out/manifest.json became a symbolic link")
    before["out/manifest.json"] = f"link -> {work / 'other.txt'}"
    assert tree(work) == before


def test_an_output_that_vanishes_before_the_commit_is_simply_written(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older output deleted meanwhile is no fault: the new one takes its place."""
    write_old(work, ["out/g.png", "out/s.npy"])
    _before_commit(monkeypatch, lambda: (work / "out" / "g.png").unlink())
    result = invoke(
        "vae-generate", ["--force", "--onnx", DEC, "--npy", "out/s.npy", "-o", "out/g.png"]
    )
    assert result.exit_code == 0, result.stderr
    assert (work / "out" / "g.png").read_bytes().startswith(b"\x89PNG")
    assert np.load(work / "out" / "s.npy").shape == (25, 1, 28, 28)
    assert not leftovers(work)
