"""Outputs never replace an input or anything that is not a regular file, and one writer per folder.

Every output option of every command against every kind of bad target (an input by another
name, a link, a FIFO, a socket, a device, a folder, another output) is refused in one line,
exit 2, before any work, with the whole folder tree byte for byte as it was. A second command
into a folder another process is writing into is refused in one line; a SIGKILLed writer
leaves no lock behind. Cheap refusals run in-process (CliRunner); the console scripts refuse
the same way in processes of their own."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from disk import (
    BUSY,
    CACHED,
    DEC,
    ENC,
    EXPORT_FILES,
    MANIFEST,
    STAGING,
    TEST_IMAGES,
    TRAIN,
    TRAIN_FILES,
    TRAIN_IMAGES,
    invoke,
    words,
    write_old,
)
from harness import python_running, run
from helpers import expect_error, tree

from vae_runtime import fileio

# -- outputs that are inputs, or not regular files ----------------------------------

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
    "vae-export": words("run/model.pt --out out -q --force --data-dir data"),
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
        FixedSlot("vae-export", "--out", "out", name, "", "run/model.pt", victim)
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
    expect_error(result, 2, re.escape(f"cache/{CACHED} already exists and ") + PATTERN[kind])
    assert tree(work) == before


# -- one writer per folder -----------------------------------------------------------


def _hold() -> None:
    """Run as a script: vae-generate with sys.argv[1:], stopped just before its commit (every
    output staged, the folder locked) until killed; prints "staged" when it gets there."""
    from vae_runtime import entrypoints

    commit = fileio.Outputs.commit

    def paused(self: fileio.Outputs) -> None:
        print("staged", flush=True)
        time.sleep(600)
        commit(self)

    fileio.Outputs.commit = paused  # type: ignore[method-assign]
    sys.argv = ["vae-generate", *sys.argv[1:]]
    entrypoints.vae_generate()


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
        python_running(
            "test_faults_disk_targets",
            "_hold",
            "--force",
            "--onnx",
            DEC,
            "-n",
            "30",
            "--npy",
            "out/s.npy",
            "-o",
            "out/g.png",
        ),
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
        "vae-generate",
        ["--force", "--onnx", DEC, "-n", "30", "--npy", "out/s.npy", "-o", "out/g.png"],
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
