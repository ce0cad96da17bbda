"""fileio.Outputs: the checks before any work, staging, the all-or-nothing commit, the folder lock;
and the streaming .npy writer built on it."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import tree

from vae_runtime import signals
from vae_runtime.errors import (
    BusyError,
    Interrupted,
    InvalidArgumentError,
    OutputError,
    OutputRefusedError,
)
from vae_runtime.fileio import Outputs, journal, sha256_file, write_file
from vae_runtime.npy import NpyWriter


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "old.bin").write_bytes(b"old")
    (tmp_path / "input.bin").write_bytes(b"input")
    return tmp_path


def refuse(folder: Path, targets: list[Path], reads: list[Path], pattern: str) -> None:
    before = tree(folder)
    with pytest.raises(OutputRefusedError, match=pattern) as info:
        Outputs(targets, reads=reads)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)
    assert tree(folder) == before


def test_an_input_is_never_an_output_whatever_the_path_says(folder: Path) -> None:
    source = folder / "input.bin"
    sub = folder / "sub"
    sub.mkdir()
    (folder / "link.bin").symlink_to(source)
    os.link(source, folder / "hard.bin")
    for alias in (source, sub / ".." / "input.bin", Path(os.path.relpath(source))):
        refuse(folder, [alias], [source], "is the input")
    refuse(folder, [folder / "hard.bin"], [source], "is the input")  # same inode
    refuse(folder, [source], [folder / "link.bin"], "is the input")  # read through a link


def test_only_regular_files_or_nothing_are_replaced(folder: Path) -> None:
    (folder / "link.bin").symlink_to(folder / "old.bin")
    os.mkfifo(folder / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock"))
        refuse(folder, [folder / "sock"], [], "is a socket")
    refuse(folder, [folder / "link.bin"], [], "is a symbolic link")
    refuse(folder, [folder / "fifo"], [], "is a FIFO")
    refuse(folder, [folder / "x" / ".."], [], "is not a file name")
    refuse(folder, [folder], [], "is a folder")
    with pytest.raises(OutputRefusedError, match="is a character device"):
        Outputs([Path("/dev/null")])


def test_two_outputs_on_one_file_and_existing_files_without_force(folder: Path) -> None:
    (folder / "sub").mkdir()
    refuse(folder, [folder / "a", folder / "sub" / ".." / "a"], [], "are the same file")
    before = tree(folder)
    with pytest.raises(OutputRefusedError, match=r"old.bin already exists; pass --force \(-f\)"):
        Outputs([folder / "old.bin"])  # without force: the default
    with pytest.raises(OutputRefusedError, match=r"old.bin already exists; pass --force"):
        Outputs([folder / "old.bin"], force=False)
    assert tree(folder) == before
    Outputs([folder / "old.bin"], force=True)  # checked, allowed; nothing written yet
    assert tree(folder) == before


def test_a_folder_or_fifo_is_refused_even_with_force(folder: Path) -> None:
    """Not a regular file: never replaced; the line says so and names the flag."""
    os.mkfifo(folder / "pipe")
    (folder / "dir").mkdir()
    for name, kind in (("pipe", "a FIFO"), ("dir", "a folder")):
        for force in (False, True):
            with pytest.raises(OutputRefusedError) as info:
                Outputs([folder / name], force=force)
            assert str(info.value) == (
                f"{folder / name} already exists and is {kind}; mnist-vae replaces only "
                "regular files, even with --force (-f): choose another path"
            )


def test_folders_missing_or_unwritable(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist; create it first") as info:
        Outputs([tmp_path / "no" / "f"])
    assert info.value.exit_code == 1
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputRefusedError, match="is not a folder"):
        Outputs([tmp_path / "file" / "f"])
    with pytest.raises(OutputRefusedError, match=r"cannot create .*deeper: .*file is not a folder"):
        Outputs([tmp_path / "file" / "deeper" / "f"], create_dirs=True)


def test_commit_replaces_the_set_and_leaves_nothing_else(folder: Path) -> None:
    a, b = folder / "old.bin", folder / "new" / "deep" / "b.bin"
    with Outputs([a, b], force=True, create_dirs=True) as out:
        out.write_bytes(a, b"A1")
        with out.open(b) as f:
            f.write(b"B1")
        assert a.read_bytes() == b"old" and not b.exists()  # nothing visible before the commit
        out.commit()
        assert a.read_bytes() == b"A1" and b.read_bytes() == b"B1"
        out.write_bytes(a, b"A2")  # a second commit of the same object
        out.commit()
    assert a.read_bytes() == b"A2"
    assert sorted(tree(folder)) == sorted(
        ["old.bin", "input.bin", "new", "new/deep", "new/deep/b.bin"]
    )
    assert list(journal)[-2:] == [a, b]


def test_a_scratch_file_is_read_back_and_never_committed(folder: Path) -> None:
    before = tree(folder)
    target, reference = folder / "decoder.int8.onnx", folder / "decoder.onnx"
    with Outputs([target], force=True) as out:
        path = out.write_scratch(reference, b"fp32")
        assert path.read_bytes() == b"fp32" and path.parent != folder  # hidden, staged
        for wrong in (target, folder / "elsewhere" / "x.onnx"):  # an output; not beside one
            with pytest.raises(InvalidArgumentError, match="is an output, or not beside one"):
                out.write_scratch(wrong, b"")
        out.write_bytes(target, b"int8")
        out.commit()
    assert tree(folder) == {**before, "decoder.int8.onnx": b"int8"}


def test_abort_restores_everything_and_removes_the_folders_it_made(folder: Path) -> None:
    before = tree(folder)
    a, b = folder / "old.bin", folder / "made" / "here" / "b.bin"
    with pytest.raises(RuntimeError), Outputs([a, b], force=True, create_dirs=True) as out:
        out.write_bytes(a, b"new")
        out.write_bytes(b, b"new")
        raise RuntimeError("stop")
    assert tree(folder) == before


def test_a_failing_rename_puts_the_old_files_back(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "b.bin").write_bytes(b"old b")
    before = tree(folder)
    real_replace = os.replace
    calls = []

    def replace(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2 and Path(str(dst)).name == "b.bin":
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    a, b = folder / "old.bin", folder / "b.bin"
    with pytest.raises(OutputError, match=r"b.bin: cannot write it: Input/output error"):  # noqa: SIM117
        with Outputs([a, b], force=True) as out:
            out.write_bytes(a, b"new a")
            out.write_bytes(b, b"new b")
            out.commit()
    monkeypatch.undo()
    assert tree(folder) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES])
def test_write_errors_name_the_target_not_a_temporary_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    before = tree(folder)
    target = folder / "old.bin"

    def failing(self: Path, data: bytes) -> int:
        raise OSError(code, os.strerror(code), str(self))

    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(OutputError) as info, Outputs([target], force=True) as out:
        out.write_bytes(target, b"new")
    monkeypatch.undo()
    assert str(info.value) == f"{target}: cannot write it: {os.strerror(code)}"
    assert info.value.errno == code
    assert tree(folder) == before


def test_a_target_swapped_for_a_symlink_after_the_check_is_not_replaced(folder: Path) -> None:
    target = folder / "old.bin"
    with pytest.raises(OutputRefusedError, match="became a symbolic link"):  # noqa: SIM117
        with Outputs([target], force=True) as out:
            out.write_bytes(target, b"new")
            target.unlink()
            target.symlink_to(folder / "input.bin")
            out.commit()
    assert (folder / "input.bin").read_bytes() == b"input"
    assert target.is_symlink()


def test_one_writer_per_folder(tmp_path: Path) -> None:
    with Outputs([tmp_path / "a"]), pytest.raises(BusyError, match="another mnist-vae command"):  # noqa: SIM117
        with Outputs([tmp_path / "b"]):
            pass
    with Outputs([tmp_path / "b"]):  # released with the first
        pass


def test_a_killed_writer_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from vae_runtime.fileio import Outputs\n"
            f"with Outputs([Path({str(tmp_path)!r}) / 'a']):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    with pytest.raises(BusyError):
        Outputs([tmp_path / "b"]).__enter__()
    holder.kill()
    holder.wait()
    with Outputs([tmp_path / "b"]):
        pass
    assert list(tmp_path.iterdir()) == []


def test_signals_wait_for_the_commit_to_finish(folder: Path) -> None:
    signals.install()
    try:
        a, b = folder / "old.bin", folder / "b.bin"
        with pytest.raises(Interrupted) as info, Outputs([a, b], force=True) as out:
            out.write_bytes(a, b"new a")
            out.write_bytes(b, b"new b")
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
                out.commit()  # held off: both files are replaced before the signal lands
            raise AssertionError("the held signal was not delivered")
        assert info.value.exit_code == 143
        assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    finally:
        for signum in signals.SIGNALS:
            signal.signal(signum, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_write_file_and_sha256(tmp_path: Path) -> None:
    write_file(tmp_path / "f", b"abc")
    assert sha256_file(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    with pytest.raises(InvalidArgumentError, match="not one of this command's outputs"):  # noqa: SIM117
        with Outputs([tmp_path / "f"], force=True) as out:
            out.write_bytes(tmp_path / "g", b"")


# -- NpyWriter ---------------------------------------------------------------------------------


def test_npy_writer_streams_a_valid_file(tmp_path: Path) -> None:
    data = np.random.default_rng(3).random((10, 1, 28, 28)).astype(np.float32)
    with NpyWriter(tmp_path / "a.npy", data.shape) as npy:
        for start in range(0, 10, 4):
            npy.write(data[start : start + 4])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), data)
    assert {p.name for p in tmp_path.iterdir()} == {"a.npy"}


def test_npy_writer_leaves_nothing_when_short_or_failing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="3 of 5 declared rows"):  # noqa: SIM117
        with NpyWriter(tmp_path / "short.npy", (5, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float32))
    with pytest.raises(RuntimeError), NpyWriter(tmp_path / "boom.npy", (5, 2)) as npy:
        npy.write(np.zeros((3, 2), np.float32))
        raise RuntimeError("interrupted")
    with pytest.raises(InvalidArgumentError, match="does not fit"):  # noqa: SIM117
        with NpyWriter(tmp_path / "dtype.npy", (5, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float64))
    with pytest.raises(InvalidArgumentError, match="more than the 2 rows"):  # noqa: SIM117
        with NpyWriter(tmp_path / "long.npy", (2, 2)) as npy:
            npy.write(np.zeros((3, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="outside its with-block"):
        NpyWriter(tmp_path / "x.npy", (1, 2)).write(np.zeros((1, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match=r"array size must be in 0\.\."):
        NpyWriter(tmp_path / "x.npy", (-1, 2))
    assert list(tmp_path.iterdir()) == []


def test_npy_writer_full_disk_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OutputError, match=r"big.npy: cannot write it: No space left"):  # noqa: SIM117
        with NpyWriter(tmp_path / "big.npy", (10, 2)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_npy_writer_without_preallocation_still_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    with NpyWriter(tmp_path / "a.npy", (2, 2)) as npy:
        npy.write(np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.ones((2, 2)))


def test_npy_writer_refuses_what_cannot_fit_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tiny:  # the disk as statvfs reports it, with 1 KiB free
        f_bavail, f_frsize = 1, 1024

    def never(fd: int, offset: int, size: int) -> None:
        raise AssertionError("posix_fallocate called for a file that cannot fit")

    monkeypatch.setattr(os, "statvfs", lambda path: Tiny)
    monkeypatch.setattr(os, "posix_fallocate", never)
    with pytest.raises(OutputError, match=r"do not fit on the disk \(1,024 free\)"):  # noqa: SIM117
        with NpyWriter(tmp_path / "big.npy", (10, 784)):
            pass
    assert list(tmp_path.iterdir()) == []


def test_staging_left_by_a_killed_writer_is_removed_by_the_next(tmp_path: Path) -> None:
    stale = tmp_path / ".mnist-vae-k1ll3d"
    stale.mkdir()
    (stale / "samples.png").write_bytes(b"half a png")
    (tmp_path / ".mnist-vae-note").write_text("a file, not a staging folder: kept")
    with Outputs([tmp_path / "a"]) as out:
        assert not stale.exists()
        out.write_bytes(tmp_path / "a", b"A")
        out.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mnist-vae-note", "a"]


def test_a_path_the_os_cannot_even_look_up_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="File name too long"):
        Outputs([tmp_path / ("x" * 300)])


def test_a_folder_made_meanwhile_by_another_process_is_not_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_mkdir = Path.mkdir

    def racing(self: Path, *args: object, **kwargs: object) -> None:
        real_mkdir(self)  # the other process wins the race
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", racing)
    with Outputs([tmp_path / "made" / "f"], create_dirs=True):
        pass
    assert (tmp_path / "made").is_dir()  # not removed: this command did not make it


def test_the_reason_a_folder_cannot_be_made_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a non-root user
    with pytest.raises(OutputError, match=r"cannot create output folder .*new in .*: Permission"):
        Outputs([tmp_path / "new" / "f"], create_dirs=True)


def test_staged_path_and_npy_size_rules(tmp_path: Path) -> None:
    with Outputs([tmp_path / "a"]) as out, pytest.raises(InvalidArgumentError, match="nothing is"):
        out.staged_path(tmp_path / "a")
    with pytest.raises(InvalidArgumentError, match="larger than numpy makes"):
        NpyWriter(tmp_path / "x.npy", (2**40, 2**40))
    with pytest.raises(InvalidArgumentError, match="dtype must be numeric"):
        NpyWriter(tmp_path / "x.npy", (1,), np.complex64)


@pytest.fixture
def handlers() -> Iterator[None]:
    """signals.install() for one test; Python's own handlers and unraisable hook afterwards."""
    import sys

    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    hook = sys.unraisablehook
    signals.install()
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
    sys.unraisablehook = hook


def test_a_second_signal_while_the_first_unwinds_is_ignored(handlers: None) -> None:
    with pytest.raises(Interrupted) as info:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # during the clean-up: must not cut it short
            time.sleep(0.05)
    assert info.value.exit_code == 130


def test_an_interrupt_lost_in_a_finalizer_is_delivered_again(handlers: None) -> None:
    import sys
    from types import SimpleNamespace

    lost = SimpleNamespace(exc_value=Interrupted(signal.SIGTERM), exc_type=Interrupted)
    sys.unraisablehook(lost)  # what Python calls when a __del__ or a callback raised it
    with pytest.raises(Interrupted) as info:
        time.sleep(0.5)  # the timer delivers it again, in ordinary code
    assert info.value.exit_code == 143


def test_signals_are_not_held_outside_the_main_thread() -> None:
    import threading

    done = []

    def work() -> None:
        with signals.deferred():
            done.append(threading.current_thread().name)

    thread = threading.Thread(target=work, name="worker")
    thread.start()
    thread.join()
    assert done == ["worker"]


def test_other_unraisable_errors_go_to_the_hook_that_was_there(handlers: None) -> None:
    import sys
    from types import SimpleNamespace

    seen = []
    sys.unraisablehook = signals._catch_lost(seen.append)
    info = SimpleNamespace(exc_value=ValueError("in a __del__"), exc_type=ValueError)
    sys.unraisablehook(info)
    assert seen == [info]
