"""Issue 9, sections 1 and 2 and the lock of section 7, end to end, for all five commands.

1. An output never replaces an input or anything that is not a regular file: every output
   option of every command against every kind of bad target (an input by another name, a link,
   a FIFO, a socket, a device, a folder, another output) is refused in one line, exit 2, before
   any work, with the whole folder tree byte for byte as it was.
2. Faults in every write (the outputs, and vae-train's download into its cache): real EFBIG
   (RLIMIT_FSIZE swept over the sizes of each command's outputs), real ENOSPC (a nearly full
   tmpfs), real EROFS (a tmpfs remounted read-only), real EACCES (uid 65534 and a 0555 folder),
   EIO injected at every write primitive in turn, and files that vanish between check and use:
   one line naming the user's path and the OS reason, exit 1, every file as it was, no staging
   file or folder left, no folder the command made left.
7. One writer per folder: a second command into a folder another process is writing into is
   refused in one line; a SIGKILLed writer leaves no lock behind.

Cheap refusals run in-process (CliRunner). Faults that must be real run in real processes: the
runtime's console scripts under RLIMIT_FSIZE, and (for speed) children forked from a server
that imported torch once (`_serve`): each child is a real process with its own rlimit, uid and
file system, started in a fraction of a second instead of ~3 s. Where a test passes `graphs`,
that server's children return the session's already exported graphs instead of running
torch.onnx (seconds per export); the write path under test is unchanged, and one test runs the
real `vae-export` console script end to end. No test opens a URL: downloads read a fake mirror.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import typer
from helpers import expect_error, tree
from processes import TINY_TRAIN, Tiny, run
from typer.testing import CliRunner, Result

from vae_export.cli import app as export_app
from vae_runtime import fileio, tasks
from vae_runtime.cli import generate_app, interpolate_app, reconstruct_app
from vae_runtime.idx import read_idx
from vae_runtime.images import png_bytes
from vae_train.cli import app as train_app

HERE = Path(__file__).resolve().parent
STAGING = ".mnist-vae-"  # fileio's hidden staging folders
NOBODY = 65534
BUSY = "another mnist-vae command is writing into this folder"
DEC, ENC, MANIFEST = "onnx/decoder.onnx", "onnx/encoder.onnx", "onnx/manifest.json"
TRAIN_IMAGES, TEST_IMAGES = "data/train-images-idx3-ubyte.gz", "data/t10k-images-idx3-ubyte.gz"
TRAIN_FILES = (  # write order
    "metrics.jsonl",
    "samples.png",
    "reconstructions.png",
    "loss.png",
    "progress.gif",
    "model.pt",
)
EXPORT_FILES = ("encoder.onnx", "decoder.onnx", "manifest.json")  # write order
APPS: dict[str, typer.Typer] = {
    "vae-generate": generate_app,
    "vae-interpolate": interpolate_app,
    "vae-reconstruct": reconstruct_app,
    "vae-train": train_app,
    "vae-export": export_app,
}
TRAIN = ("--data-dir", "data", "--epochs", "1", "-q", *TINY_TRAIN)  # TRAIN[2:]: download
CACHED = "mnist-vae/mnist/train-images-idx3-ubyte.gz"  # under XDG_CACHE_HOME
runner = CliRunner()
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs the train extra (torch)"
)


def words(line: str) -> tuple[str, ...]:
    """A command line's arguments (no path in these tests holds a space)."""
    return tuple(line.split())


# -- the work folder: copies of the tiny model's files, the command's current folder ----------


@pytest.fixture(scope="module")
def digits(tiny: Tiny) -> tuple[bytes, bytes]:
    """Two input images (PNG bytes): the first two test digits."""
    images = read_idx(tiny.data / "t10k-images-idx3-ubyte.gz", limit=2)
    return png_bytes(images[0]), png_bytes(images[1])


def populate(root: Path, tiny: Tiny, digits: tuple[bytes, bytes]) -> Path:
    """`root` with onnx/ (encoder, decoder, manifest), data/, run/model.pt, a.png, b.png,
    other.txt (someone else's file) and an empty out/. Returns `root`."""
    (root / "onnx").mkdir(parents=True)
    for source in (tiny.encoder, tiny.decoder, tiny.manifest):
        shutil.copy2(source, root / "onnx" / source.name)
    shutil.copytree(tiny.data, root / "data")
    (root / "run").mkdir()
    shutil.copy2(tiny.model, root / "run" / "model.pt")
    (root / "a.png").write_bytes(digits[0])
    (root / "b.png").write_bytes(digits[1])
    (root / "other.txt").write_bytes(b"someone else's file\n")
    (root / "out").mkdir()
    return root


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a fake MNIST mirror serves: 256 KiB that match no checksum."""
    path = tmp_path_factory.mktemp("mirror") / "payload.gz"
    path.write_bytes(np.random.default_rng(0).bytes(256 << 10))
    return path


@pytest.fixture
def stub_export(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, vae-export's torch.onnx step returns the graphs exported already."""
    from vae_export import onnx_export

    blobs = {"encoder": tiny.encoder.read_bytes(), "decoder": tiny.decoder.read_bytes()}
    monkeypatch.setattr(onnx_export, "graph_bytes", lambda role, *a, **k: blobs[role])
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)


@pytest.fixture
def work(
    tmp_path: Path, tiny: Tiny, digits: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A populated folder, made the current one; no VAE_DATA_DIR or VAE_DEBUG in the way."""
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    monkeypatch.delenv("VAE_DEBUG", raising=False)
    root = populate(tmp_path / "work", tiny, digits)
    monkeypatch.chdir(root)
    return root


def invoke(name: str, args: Sequence[str]) -> Result:
    """Command `name` in this process, in the current folder."""
    return runner.invoke(APPS[name], [str(a) for a in args])


def write_old(root: Path, paths: Sequence[str]) -> None:
    """Older outputs at `paths` (relative to `root`), each with bytes of its own."""
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"old content of {rel}\n".encode())


def leftovers(root: Path) -> list[str]:
    """Staging folders, rollback copies or temporary files anywhere under `root`."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.startswith((STAGING, ".old-")) or p.name.endswith(".tmp")
    ]


def expect_fault(result: Any, target: str, reason: str, code: int = 1) -> str:
    """One line, exit `code`, naming the user's path `target` (a regex) and the OS `reason`,
    never a staging or temporary name."""
    line = expect_error(result, code, f"{target}: .*{reason}")
    for hidden in (STAGING, ".old-", ".tmp"):
        assert hidden not in line, line
    return line


# -- section 1: outputs that are inputs, or not regular files ----------------------------------

# Kinds of bad target. Those up to "input-link" make the output path resolve to one of the
# command's inputs; the others put something that is not a regular file (or absent) there.
ALIASES = ("input", "dotdot", "absolute", "dir-link", "input-link")
THINGS = ("link-to-input", "hardlink", "link", "dangling", "fifo", "socket", "device", "folder")
PATTERN = {
    **dict.fromkeys(ALIASES, "is the input"),
    "hardlink": "is the input",
    "link-to-input": "is a symbolic link",
    "link": "is a symbolic link",
    "dangling": "is a symbolic link",
    "fifo": "is a FIFO",
    "socket": "is a socket",
    "device": "is a character device",
    "devnull": "is a character device",
    "folder": "is a folder",
    "twice": "are the same file",
    "not-a-folder": "not a folder",
}
BASE = {  # every output of each command, in out/
    "vae-generate": words(
        f"--onnx {DEC} -n 2 --out out/g.png --npy out/s.npy --images-dir out/imgs"
    ),
    "vae-interpolate": words(
        f"--onnx {DEC} --encoder {ENC} a.png b.png --steps 3 --out out/i.png --gif out/i.gif "
        "--npy out/i.npy"
    ),
    "vae-reconstruct": words(
        f"--encoder {ENC} --decoder {DEC} a.png {TEST_IMAGES} -n 3 --out out/r.png --npy out/r.npy"
    ),
    "vae-train": (*TRAIN, "--out", "out", "--force"),
    "vae-export": words("run/model.pt --out-dir out -q --force --data-dir data"),
}


@dataclass(frozen=True)
class FreeSlot:
    """An option that names an output file: bad values go in its place. `victim`: the input
    it is aimed at; `other`: another output of the same command (for "twice")."""

    command: str
    option: str
    victim: str
    other: str


@dataclass(frozen=True)
class FixedSlot:
    """An output with a fixed name in a folder option. The input kinds copy `source` there and
    point `input_option` at it ("" = the first positional argument, None = no such input);
    links and hard links aim at `victim`."""

    command: str
    folder_option: str
    folder: str
    name: str
    input_option: str | None
    source: str
    victim: str


FREE_SLOTS = (
    FreeSlot("vae-generate", "--out", DEC, "out/s.npy"),
    FreeSlot("vae-generate", "--npy", MANIFEST, "out/g.png"),
    FreeSlot("vae-interpolate", "--out", "a.png", "out/i.gif"),
    FreeSlot("vae-interpolate", "--gif", ENC, "out/i.npy"),
    FreeSlot("vae-interpolate", "--npy", "b.png", "out/i.png"),
    FreeSlot("vae-reconstruct", "--out", TEST_IMAGES, "out/r.npy"),
    FreeSlot("vae-reconstruct", "--npy", MANIFEST, "out/r.png"),
)
FIXED_SLOTS = (
    FixedSlot("vae-generate", "--images-dir", "out/imgs", "sample_00000.png", "--onnx", DEC, DEC),
    FixedSlot("vae-train", "--out", "out", "model.pt", None, "", TRAIN_IMAGES),
    *(
        FixedSlot("vae-train", "--out", "out", name, "--resume", "run/model.pt", images)
        for name, images in zip(
            TRAIN_FILES[:3], (TEST_IMAGES, TRAIN_IMAGES, TEST_IMAGES), strict=True
        )
    ),
    *(
        FixedSlot("vae-export", "--out-dir", "out", name, "", "run/model.pt", victim)
        for name, victim in zip(
            EXPORT_FILES, ("run/model.pt", TEST_IMAGES, "run/model.pt"), strict=True
        )
    ),
)
NOT_A_FOLDER = {"vae-generate": DEC, "vae-train": TRAIN_IMAGES, "vae-export": "run/model.pt"}


def _cases() -> list[Any]:
    cases = []
    for free in FREE_SLOTS:
        for kind in (*ALIASES, *THINGS, "devnull", "twice"):
            cases.append(pytest.param(free, kind, id=f"{free.command}{free.option}-{kind}"))
    for fixed in FIXED_SLOTS:
        kinds = [*(ALIASES if fixed.input_option is not None else ()), *THINGS]
        if fixed.command == "vae-generate":
            kinds.append("twice")
        for kind in kinds:
            cases.append(pytest.param(fixed, kind, id=f"{fixed.command}-{fixed.name}-{kind}"))
    for name in NOT_A_FOLDER:
        slot = next(s for s in FIXED_SLOTS if s.command == name)
        cases.append(
            pytest.param(slot, "not-a-folder", id=f"{name}{slot.folder_option}-not-a-folder")
        )
    return cases


def _set(argv: list[str], option: str, value: str) -> None:
    if option == "":
        argv[0] = value
    elif option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]


def _make_thing(path: Path, kind: str, victim: Path, root: Path) -> None:
    """Put a bad thing of `kind` at `path`."""
    if kind == "link-to-input":
        path.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, path)
    elif kind == "link":
        path.symlink_to(root / "other.txt")
    elif kind == "dangling":
        path.symlink_to(root / "nowhere")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            # relative: AF_UNIX paths are short; the socket file stays after the socket closes
            sock.bind(os.path.relpath(path))
    elif kind == "device":
        try:  # a twin of /dev/null (char 1, 3) where the output goes
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError as exc:
            pytest.skip(f"cannot make a device node here ({exc}); /dev/null cases cover it")
    elif kind == "folder":
        path.mkdir()
    else:
        raise AssertionError(kind)


def _free_case(root: Path, slot: FreeSlot, kind: str) -> list[str]:
    argv = list(BASE[slot.command])
    folder, name = os.path.split(slot.victim)
    suffix = Path(argv[argv.index(slot.option) + 1]).suffix
    value = f"out/bad{suffix}"
    if kind == "input":
        value = slot.victim
    elif kind == "dotdot":
        (root / folder / "sub").mkdir()
        value = os.path.join(folder, "sub", "..", name)
    elif kind == "absolute":
        value = str(root / slot.victim)
    elif kind == "dir-link":
        (root / "alias").symlink_to(root / folder)
        value = f"alias/{name}"
    elif kind == "input-link":  # the input is read through a link; the output names the file
        value = slot.victim
        if slot.victim in argv:
            (root / f"link-{name}").symlink_to(root / slot.victim)
            argv = [f"link-{name}" if a == slot.victim else a for a in argv]
        else:  # the manifest, read beside the decoder: read the decoder's folder through a link
            (root / "alias").symlink_to(root / folder)
            argv = [
                f"alias/{a[len(folder) + 1 :]}" if a.startswith(f"{folder}/") else a for a in argv
            ]
    elif kind == "devnull":
        value = "/dev/null"
    elif kind == "twice":
        (root / "out" / "sub").mkdir()
        value = f"out/sub/../{Path(slot.other).name}"
    else:
        _make_thing(root / value, kind, root / slot.victim, root)
    _set(argv, slot.option, value)
    return argv


def _fixed_case(root: Path, slot: FixedSlot, kind: str) -> list[str]:
    argv = list(BASE[slot.command])
    folder = root / slot.folder
    folder.mkdir(exist_ok=True)
    target = f"{slot.folder}/{slot.name}"
    if kind in ALIASES:
        assert slot.input_option is not None
        shutil.copy2(root / slot.source, root / target)
        value = target
        if kind == "dotdot":
            (folder / "sub").mkdir()
            value = f"{slot.folder}/sub/../{slot.name}"
        elif kind == "absolute":
            value = str(root / target)
        elif kind == "dir-link":
            (root / "alias").symlink_to(folder)
            _set(argv, slot.folder_option, "alias")
        elif kind == "input-link":
            (root / "link-input").symlink_to(root / target)
            value = "link-input"
        _set(argv, slot.input_option, value)
    elif kind == "twice":
        _set(argv, "--out", target)
    elif kind == "not-a-folder":
        _set(argv, slot.folder_option, NOT_A_FOLDER[slot.command])
    else:
        _make_thing(root / target, kind, root / slot.victim, root)
    return argv


def _no_work(self: fileio.Outputs) -> fileio.Outputs:
    raise AssertionError("work began: the outputs were entered (folders made, locked, staged)")


@pytest.mark.parametrize(("slot", "kind"), _cases())
def test_an_output_never_replaces_an_input_or_a_non_regular_file(
    work: Path, slot: FreeSlot | FixedSlot, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused in one line, exit 2, before any work; every file as it was."""
    argv = (
        _free_case(work, slot, kind)
        if isinstance(slot, FreeSlot)
        else _fixed_case(work, slot, kind)
    )
    before = tree(work)
    # Any work (making a folder, locking, staging, loading a graph or the data) starts by
    # entering the outputs; if that happened, the command reports an internal error instead.
    monkeypatch.setattr(fileio.Outputs, "__enter__", _no_work)
    result = invoke(slot.command, argv)
    expect_error(result, 2, PATTERN[kind])
    assert tree(work) == before
    if kind == "devnull":
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize(
    ("name", "args", "kind"),
    [
        ("vae-generate", words(f"--onnx {DEC} -o /dev/null"), "devnull"),
        ("vae-interpolate", words(f"--onnx {DEC} --no-gif -o onnx/sub/../manifest.json"), "dotdot"),
        (
            "vae-reconstruct",
            words(f"--encoder {ENC} --decoder {DEC} a.png -o out/x --npy out/x"),
            "twice",
        ),
    ],
)
def test_the_console_scripts_refuse_the_same_way(
    work: Path, name: str, args: tuple[str, ...], kind: str
) -> None:
    """The same refusals through the installed console scripts, in processes of their own."""
    (work / "onnx" / "sub").mkdir()
    before = tree(work)
    expect_error(run([name, *args], work), 2, PATTERN[kind])
    assert tree(work) == before


def test_an_input_seen_through_a_bind_mount_is_still_an_input(work: Path) -> None:
    """A bind mount gives the decoder a second real path: only its (device, inode) tells."""
    view = work / "view"
    view.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a bind mount needs root and mount(8)")
    done = subprocess.run(
        ["mount", "--bind", str(work / "onnx"), str(view)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip()})")
    try:
        assert os.path.realpath(view / "decoder.onnx") != os.path.realpath(work / DEC)
        before = tree(work)
        result = invoke("vae-generate", ["--onnx", DEC, "-o", "view/decoder.onnx"])
        expect_error(result, 2, "is the input")
        assert tree(work) == before
    finally:
        if subprocess.run(["umount", str(view)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], check=True)


@pytest.mark.parametrize("kind", ["fifo", "socket", "dangling", "folder"])
def test_the_download_never_replaces_a_non_regular_file(
    work: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """vae-train without a data folder downloads into its cache, whose file is an output too:
    a FIFO, socket, dangling link or folder there is refused (before any URL is opened)."""

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a URL was opened")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", "cache")
    cached = work / "cache" / CACHED
    cached.parent.mkdir(parents=True)
    _make_thing(cached, kind, work / "other.txt", work)
    before = tree(work)
    result = invoke("vae-train", [*TRAIN[2:], "--out", "fresh/run"])
    expect_error(result, 2, re.escape(f"cache/{CACHED} ") + PATTERN[kind])
    assert tree(work) == before


# -- the fork server: real processes for vae-train and vae-export, without 3 s of imports each --


def _run_actions(actions: list[list[Any]]) -> None:
    """File system changes a child makes at a hook point (after the command's checks)."""
    for op, *args in actions:
        if op == "chmod":
            os.chmod(args[0], int(args[1]))
        elif op == "remount-ro":
            subprocess.run(["mount", "-o", "remount,ro", args[0]], check=True)
        elif op == "forbid":  # the command was to refuse before this point
            raise AssertionError("work began: the outputs were entered")
        else:
            raise AssertionError(op)
    actions.clear()


def _child(request: dict[str, Any], out_fd: int, err_fd: int) -> int:
    """In the forked child: set the stage the request asks for, then run the command."""
    import vae_export.__main__
    import vae_train.__main__
    from vae_export import onnx_export
    from vae_runtime import _entry

    os.chdir(request["cwd"])
    for key in ("VAE_DEBUG", "VAE_DATA_DIR"):
        os.environ.pop(key, None)
    os.environ.update(request.get("env") or {})
    if request.get("download"):  # every URL serves these bytes: no network, ever
        payload = Path(request["download"]).read_bytes()
        urllib.request.urlopen = lambda *args, **kwargs: io.BytesIO(payload)  # type: ignore[assignment]
    graphs = request.get("graphs")
    if graphs:
        blobs = {role: Path(path).read_bytes() for role, path in graphs.items()}
        onnx_export.graph_bytes = lambda role, *args, **kwargs: blobs[role]  # type: ignore[assignment]
    after_enter = request.get("after_enter") or []
    if after_enter:
        enter = fileio.Outputs.__enter__

        def hooked(self: fileio.Outputs) -> fileio.Outputs:
            entered = enter(self)
            _run_actions(after_enter)
            return entered

        fileio.Outputs.__enter__ = hooked  # type: ignore[method-assign]
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    if request.get("fsize") is not None:
        limit = int(request["fsize"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if request.get("user") is not None:
        os.setgroups([])
        os.setgid(int(request["user"]))
        os.setuid(int(request["user"]))
    mains: dict[str, Callable[[], None]] = {
        "vae-train": vae_train.__main__.main,
        "vae-export": vae_export.__main__.main,
        "vae-generate": _entry.vae_generate,
        "vae-interpolate": _entry.vae_interpolate,
        "vae-reconstruct": _entry.vae_reconstruct,
    }
    sys.argv = [request["command"], *request["args"]]
    try:
        mains[request["command"]]()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _collect(pid: int, out_r: int, err_r: int) -> dict[str, Any]:
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    with selectors.DefaultSelector() as selector:
        for fd in chunks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    _, status = os.waitpid(pid, 0)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "stdout": b"".join(chunks[out_r]).decode(errors="replace"),
        "stderr": b"".join(chunks[err_r]).decode(errors="replace"),
    }


def _serve() -> None:
    """The server's main loop: one JSON request a line on stdin, one forked child each, one JSON
    reply a line on stdout. Torch, onnx and every command are imported once, up front; no torch
    op runs here, so each child starts with fresh thread pools. numpy.random and torch._dynamo
    are what the commands import lazily: a child switched to uid 65534 could not, as the
    interpreter's standard library lies under /root (0700)."""
    import numpy.random  # noqa: F401
    import torch
    import torch._dynamo  # noqa: F401

    import vae_export.__main__
    import vae_export.onnx_export  # noqa: F401
    import vae_runtime.entrypoints  # noqa: F401
    import vae_train.__main__
    import vae_train.training  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 98
            try:
                os.close(out_r)
                os.close(err_r)
                code = _child(request, out_w, err_w)
            finally:
                os._exit(code)
        os.close(out_w)
        os.close(err_w)
        print(json.dumps(_collect(pid, out_r, err_r)), flush=True)


def _python(function: str, *args: str) -> list[str]:
    """A command line that runs `function` of this module in a fresh interpreter."""
    paths = [str(HERE), str(HERE.parent)]
    code = (
        f"import sys; sys.path[:0] = {paths!r}; import {Path(__file__).stem} as m; m.{function}()"
    )
    return [sys.executable, "-c", code, *args]


class Server:
    """A started `_serve` process; `run` is `processes.run` for a forked child."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("VAE_DEBUG", "VAE_DATA_DIR")}
        self.process = subprocess.Popen(
            _python("_serve"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert json.loads(self._reply(120)) == {"ready": True}

    def _reply(self, timeout: float) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.process.kill()
                raise AssertionError(f"the fork server gave no answer in {timeout} s")
        line = self.process.stdout.readline()
        assert line, "the fork server died"
        return line

    def run(
        self,
        name: str,
        args: Sequence[object],
        cwd: Path,
        *,
        fsize: int | None = None,
        user: int | None = None,
        env: dict[str, str] | None = None,
        graphs: Tiny | None = None,
        download: Path | None = None,
        after_enter: Sequence[Sequence[object]] = (),
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Command `name` with `args` in a child process: RLIMIT_FSIZE `fsize` (SIGXFSZ
        ignored), uid and gid `user`, `env` added; with `graphs`, torch.onnx's output is the
        graphs exported already; with `download`, every URL serves that file's bytes;
        `after_enter`: file system changes made after the checks."""
        request = {
            "command": name,
            "args": [str(a) for a in args],
            "cwd": str(cwd),
            "fsize": fsize,
            "user": user,
            "env": env or {},
            "graphs": {"encoder": str(graphs.encoder), "decoder": str(graphs.decoder)}
            if graphs
            else None,
            "download": str(download) if download else None,
            "after_enter": [[str(a) for a in action] for action in after_enter],
        }
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self._reply(timeout))
        return subprocess.CompletedProcess(
            [name, *request["args"]], reply["rc"], reply["stdout"], reply["stderr"]
        )

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    started = Server()
    try:
        yield started
    finally:
        started.close()


# -- section 2: real EFBIG at every write, from RLIMIT_FSIZE ----------------------------------


def _fsize(limit: int) -> Callable[[], None]:
    """A preexec_fn: files may not grow past `limit` bytes, and the kernel's SIGXFSZ is ignored
    so that the write fails with EFBIG instead of killing the process."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


@dataclass(frozen=True)
class Combo:
    """One command line and its outputs in the order it writes them; `fresh`: folders that do
    not exist before (the command makes them); `forked`: run through the fork server."""

    command: str
    args: tuple[str, ...]
    order: tuple[str, ...]
    fresh: tuple[str, ...] = ()
    forked: bool = False


def _images(folder: str, n: int) -> tuple[str, ...]:
    return tuple(f"{folder}/sample_{i:05d}.png" for i in range(n))


COMBOS = {
    "generate-all": Combo(
        "vae-generate",
        words(f"--onnx {DEC} -n 30 --npy fresh/deep/s.npy --images-dir out/imgs -o out/g.png"),
        ("fresh/deep/s.npy", *_images("out/imgs", 30), "out/g.png"),
        fresh=("fresh",),
    ),
    "generate-images": Combo(
        "vae-generate",
        words(f"--onnx {DEC} -n 30 --scale 2 --images-dir out/imgs -o out/g.png"),
        (*_images("out/imgs", 30), "out/g.png"),
    ),
    "interpolate-all": Combo(
        "vae-interpolate",
        words(f"--onnx {DEC} --npy out/i.npy --gif out/i.gif -o out/i.png"),
        ("out/i.npy", "out/i.gif", "out/i.png"),
    ),
    "interpolate-grid-last": Combo(
        "vae-interpolate",
        words(f"--onnx {DEC} --no-gif --steps 2 --scale 32 --npy out/i.npy -o out/i.png"),
        ("out/i.npy", "out/i.png"),
    ),
    "reconstruct": Combo(
        "vae-reconstruct",
        words(f"--encoder {ENC} --decoder {DEC} {TEST_IMAGES} -n 2 --scale 16 --npy out/r.npy")
        + words("-o out/r.png"),
        ("out/r.npy", "out/r.png"),
    ),
    "train": Combo(
        "vae-train",
        (*TRAIN, "--out", "out", "--force"),
        tuple(f"out/{name}" for name in TRAIN_FILES),
        forked=True,
    ),
    "train-new-folder": Combo(
        "vae-train",
        (*TRAIN, "--out", "fresh/run"),
        tuple(f"fresh/run/{name}" for name in TRAIN_FILES),
        fresh=("fresh",),
        forked=True,
    ),
    "export": Combo(
        "vae-export",
        words("run/model.pt -o out -q --force"),
        tuple(f"out/{name}" for name in EXPORT_FILES),
        forked=True,
    ),
}
# Where the limit falls: before the first byte, inside the first file, exactly at the end of the
# files before the first bigger one (it fails at its first byte past them), inside the last
# file, inside a set of similar files (images-dir), one byte short of the largest, all fitting.
POINTS = {
    "generate-all": ("first-byte", "in-header", "inside-first", "one-short", "fits"),
    "generate-images": ("inside-first", "median", "inside-last", "fits"),
    "interpolate-all": ("first-byte", "between", "one-short", "fits"),
    "interpolate-grid-last": ("inside-last",),
    "reconstruct": ("inside-first", "inside-last", "fits"),
    "train": ("first-byte", "inside-first", "between", "inside-last", "fits"),
    "train-new-folder": ("first-byte", "inside-last"),
    "export": ("first-byte", "inside-first", "between", "fits"),
}
SIZE_MARGIN = 64  # bytes: train's files hold timings, so their sizes vary by a few bytes


def _limit_at(point: str, sizes: list[int], slack: int) -> int:
    biggest = max(sizes)
    if point == "first-byte":
        return 0
    if point == "in-header":  # inside the 128-byte .npy header
        return 64
    if point == "inside-first":
        return sizes[0] // 2
    if point == "between":  # all files before the first bigger one fit (exactly, or by `slack`)
        for i in range(1, len(sizes)):
            if sizes[i] > max(sizes[:i]) + 2 * slack:
                return max(sizes[:i]) + slack
        raise AssertionError(f"no file is bigger than those before it: {sizes}")
    if point == "inside-last":
        assert sizes[-1] > max(sizes[:-1]), f"the last file is not the largest: {sizes}"
        return (max(sizes[:-1]) + sizes[-1]) // 2
    if point == "median":
        return sorted(sizes[:-1])[len(sizes[:-1]) // 2]
    if point == "one-short":
        return biggest - 1
    if point == "fits":
        return biggest
    raise AssertionError(point)


@pytest.fixture(scope="module")
def references(
    server: Server,
    tiny: Tiny,
    digits: tuple[bytes, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[str], dict[str, bytes]]:
    """What each combo writes when nothing stops it: target -> bytes (computed once)."""
    cache: dict[str, dict[str, bytes]] = {}

    def reference(name: str) -> dict[str, bytes]:
        if name not in cache:
            combo = COMBOS[name]
            root = populate(tmp_path_factory.mktemp(f"ref-{name}"), tiny, digits)
            done = server.run(combo.command, combo.args, root, graphs=tiny)
            assert done.returncode == 0, done.stderr
            cache[name] = {rel: (root / rel).read_bytes() for rel in combo.order}
        return cache[name]

    return reference


@pytest.mark.parametrize(
    ("name", "point"), [(name, point) for name, points in POINTS.items() for point in points]
)
def test_a_real_efbig_at_any_size_loses_nothing(
    work: Path,
    server: Server,
    tiny: Tiny,
    references: Callable[[str], dict[str, bytes]],
    name: str,
    point: str,
) -> None:
    """Files may not grow past a limit that falls somewhere in the command's writes: it stops
    at the first file that does not fit, naming it, with everything as it was; a limit they all
    fit under changes nothing in the outcome."""
    combo = COMBOS[name]
    expected = references(name)
    sizes = [len(expected[rel]) for rel in combo.order]
    slack = SIZE_MARGIN if combo.command == "vae-train" else 0  # sizes vary a little
    limit = _limit_at(point, sizes, slack) * (2 if point == "fits" and combo.forked else 1)
    assert all(abs(limit - size) >= slack for size in sizes), (limit, sizes)
    old = [rel for rel in combo.order if not any(rel.startswith(f"{f}/") for f in combo.fresh)]
    write_old(work, old)
    before = tree(work)
    if combo.forked:
        result = server.run(combo.command, combo.args, work, fsize=limit, graphs=tiny)
    else:
        result = run([combo.command, *combo.args], work, preexec_fn=_fsize(limit))
    failing = next((r for r, size in zip(combo.order, sizes, strict=True) if size > limit), None)
    if failing is None:
        assert result.returncode == 0, result.stderr
        assert not leftovers(work)
        for rel in combo.order:
            if combo.forked:  # written anew (train's files hold timings: not byte-identical)
                assert (work / rel).read_bytes() != before.get(rel), rel
            else:
                assert (work / rel).read_bytes() == expected[rel], rel
        return
    expect_fault(result, re.escape(failing), "cannot write it: File too large")
    assert tree(work) == before  # old files intact, no staging left, made folders removed


def test_the_real_vae_export_under_efbig_loses_nothing(work: Path, tiny: Tiny) -> None:
    """The console script itself, torch.onnx and all: the encoder fits, the decoder does not;
    the folder it made for them is gone again."""
    encoder, decoder = tiny.encoder.stat().st_size, tiny.decoder.stat().st_size
    assert encoder + 1024 < decoder, (encoder, decoder)
    before = tree(work)
    result = run(
        ["vae-export", "run/model.pt", "-o", "fresh/onnx", "-q"],
        work,
        env={"VAE_DATA_DIR": ""},  # empty: unset for click
        preexec_fn=_fsize((encoder + decoder) // 2),
    )
    expect_fault(result, re.escape("fresh/onnx/decoder.onnx"), "File too large")
    assert tree(work) == before


# -- section 2: real ENOSPC and EROFS on a tmpfs ---------------------------------------------


@pytest.fixture
def tmpfs(work: Path) -> Iterator[Callable[[str], Path]]:
    """Mounts a tmpfs of a given size at work/disk (skips where mounting is not permitted);
    unmounted again whatever the test does."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = work / "disk"
        point.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8); the EFBIG sweep covers it")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); EFBIG covers it")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], check=True)


def _fill(disk: Path, free: int) -> None:
    """Leave about `free` bytes free on `disk` (a tmpfs: whole pages)."""
    stats = os.statvfs(disk)
    available = stats.f_bavail * stats.f_frsize
    assert available > free, (available, free)
    (disk / "filler").write_bytes(bytes(available - free))


@dataclass(frozen=True)
class Full:
    """A command into a nearly full disk: `free` bytes left; `failing`: the path (regex) that
    does not fit; `old`: earlier outputs on the disk."""

    command: str
    args: tuple[str, ...]
    free: int
    failing: str
    old: tuple[str, ...] = ()
    reason: str = "cannot write it: No space left on device"
    cache: str | None = None  # XDG_CACHE_HOME: vae-train downloads MNIST into it


FULL = {
    # An .npy is checked against the free space before it is allocated: a message of its own.
    "generate-npy": Full(
        "vae-generate",
        words(f"--onnx {DEC} -n 30 --npy disk/s.npy -o disk/g.png"),
        32 << 10,
        "disk/s.npy",
        ("disk/s.npy", "disk/g.png"),
        reason="bytes do not fit on the disk",
    ),
    "generate-images": Full(
        "vae-generate",
        words(f"--onnx {DEC} -n 30 --scale 2 --images-dir disk/imgs -o disk/g.png"),
        24 << 10,
        r"disk/imgs/sample_000\d\d\.png",
        ("disk/g.png", *_images("disk/imgs", 3)),
    ),
    "interpolate": Full(
        "vae-interpolate",
        words(f"--onnx {DEC} --npy disk/i.npy --gif disk/i.gif -o disk/i.png"),
        64 << 10,
        "disk/i.gif",
        ("disk/i.gif", "disk/i.png"),
    ),
    "reconstruct": Full(
        "vae-reconstruct",
        words(f"--encoder {ENC} --decoder {DEC} {TEST_IMAGES} -n 20 --scale 8 --npy disk/r.npy")
        + words("-o disk/r.png"),
        80 << 10,
        "disk/r.png",
        ("disk/r.png",),
    ),
    "train-new-folder": Full(
        "vae-train",
        (*TRAIN, "--out", "disk/new/run"),
        96 << 10,
        r"disk/new/run/(loss\.png|progress\.gif|model\.pt)",
    ),
    "train-download": Full(
        "vae-train",
        (*TRAIN[2:], "--out", "fresh/run"),
        64 << 10,
        re.escape(f"disk/cache/{CACHED}"),
        cache="disk/cache",
    ),
    "export": Full(
        "vae-export",
        words("run/model.pt -o disk -q --force"),
        80 << 10,
        "disk/decoder.onnx",
        ("disk/encoder.onnx", "disk/decoder.onnx", "disk/manifest.json"),
    ),
}


@pytest.mark.parametrize("name", list(FULL))
def test_a_real_full_disk_loses_nothing(
    work: Path,
    tmpfs: Callable[[str], Path],
    server: Server,
    tiny: Tiny,
    payload: Path,
    name: str,
) -> None:
    """A disk with a little room left: what fits is staged, the first file that does not is
    named, and the disk is left as it was (the filler and older outputs)."""
    case = FULL[name]
    disk = tmpfs("2m")
    write_old(work, case.old)
    _fill(disk, case.free)
    before = tree(work)
    env = {"XDG_CACHE_HOME": case.cache} if case.cache else None
    result = server.run(
        case.command, case.args, work, env=env, graphs=tiny, download=payload if env else None
    )
    expect_fault(result, case.failing, case.reason)
    assert tree(work) == before


# Every command into a folder on a read-only disk (as it is, and a folder to be made on it).
READ_ONLY = {
    "vae-generate": words(f"--onnx {DEC} -n 3 --npy disk/s.npy -o disk/g.png"),
    "vae-interpolate": words(f"--onnx {DEC} --npy disk/i.npy --gif disk/i.gif -o disk/i.png"),
    "vae-reconstruct": words(f"--encoder {ENC} --decoder {DEC} a.png -o disk/r.png"),
    "vae-train": (*TRAIN, "--out", "disk", "--force"),
    "vae-export": words("run/model.pt -o disk -q --force"),
}
OLD_ON_DISK = ("disk/g.png", "disk/i.gif", "disk/r.png", "disk/model.pt", "disk/encoder.onnx")


@pytest.mark.parametrize("name", list(READ_ONLY))
def test_a_read_only_disk_is_refused_before_any_work(
    work: Path, tmpfs: Callable[[str], Path], server: Server, name: str
) -> None:
    """A folder on a read-only disk, or one to be made there, is refused by the checks."""
    disk = tmpfs("1m")
    write_old(work, OLD_ON_DISK)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    before = tree(work)
    args = READ_ONLY[name]
    forbid = [("forbid",)]
    if name == "vae-train":  # also into a folder it would have to make there
        made = [*args[:-2], "disk/new/run"]
        result = server.run(name, made, work, after_enter=forbid)
        expect_error(
            result, 1, r"cannot create output folder disk/new\S* in disk: Read-only file system"
        )
        assert tree(work) == before
    result = (
        server.run(name, args, work, after_enter=forbid)
        if name in ("vae-train", "vae-export")
        else run([name, *args], work)  # the console script itself
    )
    expect_error(result, 1, r"\bdisk\b.*: Read-only file system")
    assert tree(work) == before


@pytest.mark.parametrize("name", list(READ_ONLY))
def test_a_disk_turning_read_only_after_the_checks_gives_a_real_erofs(
    work: Path, tmpfs: Callable[[str], Path], server: Server, tiny: Tiny, name: str
) -> None:
    """The disk is remounted read-only once the checks have passed: the first staging write
    meets a real EROFS."""
    disk = tmpfs("1m")
    write_old(work, OLD_ON_DISK)
    before = tree(work)
    result = server.run(
        name, READ_ONLY[name], work, graphs=tiny, after_enter=[("remount-ro", disk)]
    )
    expect_fault(result, r"disk/[\w.]+", "cannot write it: Read-only file system")
    assert tree(work) == before


# -- section 2: real EACCES, as uid 65534 ------------------------------------------------------


@pytest.fixture
def public(tiny: Tiny, digits: tuple[bytes, bytes]) -> Iterator[Path]:
    """A populated folder that uid 65534 can read (pytest's own temporary folders are 0700),
    with a HOME it may write (onnxruntime keeps a telemetry id there)."""
    root = Path(tempfile.mkdtemp(prefix="mnist-vae-faults-"))
    try:
        root.chmod(0o755)
        populate(root / "work", tiny, digits)
        for path in [root / "work", *(root / "work").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "home").mkdir(mode=0o777)
        (root / "home").chmod(0o777)
        yield root / "work"
    finally:
        shutil.rmtree(root)


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _skip_unless_nobody_works() -> None:
    """Skip where this process cannot start a process as uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid 65534 needs root; the EFBIG sweep covers the write path")
    try:
        subprocess.run(["true"], preexec_fn=_as_nobody, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot switch to uid 65534 here ({exc}); EFBIG covers the write path")


ACCESS = {
    "vae-generate": words(f"--onnx {DEC} -n 3 --npy box/s.npy -o box/g.png"),
    "vae-interpolate": words(f"--onnx {DEC} --gif box/i.gif -o box/i.png"),
    "vae-reconstruct": words(f"--encoder {ENC} --decoder {DEC} b.png --npy box/r.npy -o box/r.png"),
    "vae-train": (*TRAIN, "--out", "box", "--force"),
    "vae-export": words("run/model.pt -o box -q --force"),
}
OLD_IN_BOX = ("box/g.png", "box/i.png", "box/r.npy", "box/model.pt", "box/manifest.json")


@pytest.mark.parametrize("name", list(ACCESS))
def test_a_folder_the_user_may_not_write_is_refused_before_any_work(
    public: Path, server: Server, name: str
) -> None:
    """uid 65534 into root's 0555 folder: refused by the checks, before any work."""
    _skip_unless_nobody_works()
    write_old(public, OLD_IN_BOX)
    (public / "box").chmod(0o555)  # root's folder: uid 65534 may read it, not write it
    before = tree(public)
    # Forked, then switched to uid 65534: the venv's interpreter lies under /root (0700), which
    # that user cannot execute, so a console script cannot be started as it.
    home = {"HOME": str(public.parent / "home")}
    result = server.run(
        name, ACCESS[name], public, user=NOBODY, env=home, after_enter=[("forbid",)]
    )
    expect_error(result, 1, r"\bbox\b.*: Permission denied")
    assert tree(public) == before


@pytest.mark.parametrize("name", list(ACCESS))
def test_a_folder_turning_unwritable_after_the_checks_gives_a_real_eacces(
    public: Path, server: Server, tiny: Tiny, name: str
) -> None:
    """uid 65534's own folder turns 0555 once the checks have passed: a real EACCES."""
    _skip_unless_nobody_works()
    write_old(public, OLD_IN_BOX)
    os.chown(public / "box", NOBODY, NOBODY)  # the user's own folder, made 0555 mid-run
    before = tree(public)
    result = server.run(
        name,
        ACCESS[name],
        public,
        user=NOBODY,
        env={"HOME": str(public.parent / "home")},
        graphs=tiny,
        after_enter=[("chmod", public / "box", 0o555)],
    )
    expect_fault(result, r"box/[\w.]+", "cannot write it: Permission denied")
    (public / "box").chmod(0o755)
    assert tree(public) == before


@pytest.mark.parametrize("fault", ["erofs", "eacces"])
def test_an_unwritable_folder_is_refused_with_the_os_reason(
    request: pytest.FixtureRequest, server: Server, fault: str
) -> None:
    """Issue 9, section 2: the line names the user's path and the OS's reason."""
    if fault == "erofs":
        root: Path = request.getfixturevalue("work")
        disk = request.getfixturevalue("tmpfs")("1m")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = run(["vae-generate", "--onnx", DEC, "-o", "disk/g.png"], root)
        expect_error(result, 1, r"\bdisk\b.*Read-only file system")
    else:
        _skip_unless_nobody_works()
        root = request.getfixturevalue("public")
        (root / "box").mkdir(mode=0o555)
        (root / "box").chmod(0o555)
        home = {"HOME": str(root.parent / "home")}
        result = server.run(
            "vae-generate", ["--onnx", DEC, "-o", "box/g.png"], root, user=NOBODY, env=home
        )
        expect_error(result, 1, r"\bbox\b.*Permission denied")


# -- section 2: EIO at the Nth write primitive, every N -----------------------------------------


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
        words(f"--onnx {DEC} -n 3 --npy fresh/deep/s.npy --images-dir out/imgs -o out/g.png"),
        ("out/g.png", *_images("out/imgs", 2)),
    ),
    "vae-interpolate": (
        words(f"--onnx {DEC} --steps 3 --npy out/i.npy --gif out/i.gif -o out/i.png"),
        ("out/i.png", "out/i.gif"),
    ),
    "vae-reconstruct": (
        words(f"--encoder {ENC} --decoder {DEC} a.png --npy out/r.npy -o new/r.png"),
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


# -- section 2: the one write that is not an output: vae-train's download into its cache -------


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


# -- section 2: a file that vanishes between check and use --------------------------------------


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
        "vae-generate", words(f"--onnx {DEC} -o fresh/g.png"), "enter", DEC, re.escape(DEC)
    ),
    "input-image-of-reconstruct": Vanish(
        "vae-reconstruct",
        words(f"--encoder {ENC} --decoder {DEC} a.png b.png -o fresh/r.png"),
        "check_pair",
        "b.png",
        "b.png",
    ),
    "input-image-of-interpolate": Vanish(
        "vae-interpolate",
        words(f"--onnx {DEC} --encoder {ENC} a.png b.png -o out/i.png --no-gif"),
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
        words(f"--onnx {DEC} --npy out/s.npy -o out/g.png"),
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
    result = invoke("vae-generate", ["--onnx", DEC, "--npy", "out/s.npy", "-o", "out/g.png"])
    assert result.exit_code == 0, result.stderr
    assert (work / "out" / "g.png").read_bytes().startswith(b"\x89PNG")
    assert np.load(work / "out" / "s.npy").shape == (25, 1, 28, 28)
    assert not leftovers(work)


# -- section 7: one writer per folder -----------------------------------------------------------


def _hold() -> None:
    """Run as a script: vae-generate with sys.argv[1:], stopped just before its commit (every
    output staged, the folder locked) until killed; prints "staged" when it gets there."""
    from vae_runtime import _entry

    commit = fileio.Outputs.commit

    def paused(self: fileio.Outputs) -> None:
        print("staged", flush=True)
        time.sleep(600)
        commit(self)

    fileio.Outputs.commit = paused  # type: ignore[method-assign]
    sys.argv = ["vae-generate", *sys.argv[1:]]
    _entry.vae_generate()


INTO_OUT = {  # each command into out/ (or into it through a link)
    "vae-generate": ["--onnx", DEC, "-o", "out/other.png"],
    "vae-interpolate": ["--onnx", DEC, "--no-gif", "-o", "out/i.png"],
    "vae-reconstruct": ["--encoder", ENC, "--decoder", DEC, "a.png", "-o", "alias/r.png"],
    "vae-train": [*TRAIN, "--out", "out"],
    "vae-export": ["run/model.pt", "-o", "alias", "-q"],
}


def test_a_second_writer_into_a_folder_is_refused_and_a_killed_one_leaves_no_lock(
    work: Path, stub_export: None
) -> None:
    """A real vae-generate stopped just before its commit holds out/: every command (in this
    process, and a real one) is refused in one line, with nothing touched; SIGKILLed, it
    leaves the old files visible, its hidden staging folder behind, and no lock."""
    write_old(work, ["out/g.png", "out/s.npy"])
    (work / "alias").symlink_to(work / "out")
    old = tree(work / "out")
    holder = subprocess.Popen(
        _python("_hold", "--onnx", DEC, "-n", "30", "--npy", "out/s.npy", "-o", "out/g.png"),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(holder.stdout, selectors.EVENT_READ)
            assert selector.select(60), "the holder never reached its commit"
        ready = holder.stdout.readline()
        assert ready == "staged\n", (ready, holder.stderr.read() if holder.stderr else "")
        staging = [p.name for p in (work / "out").iterdir() if p.name.startswith(STAGING)]
        assert len(staging) == 1, staging
        before = tree(work)
        for name, args in INTO_OUT.items():  # every command, in this process
            expect_error(invoke(name, args), 1, BUSY)
            assert tree(work) == before, name
        real = run(["vae-generate", "--onnx", DEC, "-o", "out/x.png"], work)  # a real process
        expect_error(real, 1, re.escape("out: ") + BUSY)
        assert tree(work) == before
        elsewhere = invoke("vae-generate", ["--onnx", DEC, "-o", "x.png"])  # others: unaffected
        assert elsewhere.exit_code == 0, elsewhere.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    # Killed mid-run: the files users see are the old ones; the killed command's staging folder
    # stays behind, hidden (nothing can clean up after SIGKILL), and holds no lock.
    after = tree(work / "out")
    visible = {k: v for k, v in after.items() if not k.startswith(STAGING)}
    assert visible == old
    assert {k.split("/")[0] for k in after if k.startswith(STAGING)} <= set(staging)
    again = invoke(
        "vae-generate", ["--onnx", DEC, "-n", "30", "--npy", "out/s.npy", "-o", "out/g.png"]
    )
    assert again.exit_code == 0, again.stderr
    assert np.load(work / "out" / "s.npy").shape == (30, 1, 28, 28)
    assert (work / "out" / "g.png").read_bytes().startswith(b"\x89PNG")
    assert {p.name for p in (work / "out").iterdir()} - set(staging) == {"g.png", "s.npy"}


def test_the_same_folder_under_two_names_is_one_lock(work: Path) -> None:
    """A lock held on out/ stops a writer that names it as out/sub/.., through a link, or by
    its absolute path."""
    (work / "out" / "sub").mkdir()
    (work / "alias").symlink_to(work / "out")
    with fileio.Outputs([work / "out" / "held.bin"]) as held:
        held.write_bytes(work / "out" / "held.bin", b"held")
        before = tree(work)
        for folder in ("out/sub/..", "alias", str(work / "out")):
            result = invoke("vae-generate", ["--onnx", DEC, "-o", f"{folder}/g.png"])
            expect_error(result, 1, BUSY)
            assert tree(work) == before, folder
