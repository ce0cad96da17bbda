"""Outputs that never lose work: checked before any work, staged, then replaced as one set.

`Outputs(targets, reads=..., force=...)` checks every target before the command does anything:
it must be absent, or a regular file and `force` given (never a symlink, folder, FIFO, device or
socket, not even with `force`; `refused_existing` words the refusal every command prints), not one
of the command's inputs (compared by real path and by inode, so symlinks, `..` and hard links are
seen through), not another target, and in a writable folder. Entered, it locks each target folder
(flock: a crashed process leaves no stale lock) and makes missing folders when asked. Files are
written into a hidden staging folder beside their targets; `commit()` moves them into place
together, signals held off, and puts the old files back if any rename fails. Whatever stops the
command (an error, a full disk, Ctrl-C), the staging folder and the folders it made itself are
removed, and every file that existed before is as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from . import signals
from .errors import (
    BusyError,
    InvalidArgumentError,
    OutputError,
    OutputRefusedError,
)

_STAGING_PREFIX = ".mnist-vae-"  # hidden staging folders; removed on every way out
# Every target this process has committed, in order (a dict as an ordered set): what an
# interrupted command reports as kept. The command line clears it when a command starts.
journal: dict[Path, None] = {}


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_error(target: Path, exc: OSError) -> OutputError:
    """An OSError met while writing `target`, reworded to name the user's path, not a
    temporary one, and the OS's reason (errno kept)."""
    error = OutputError(f"{target}: cannot write it: {exc.strerror or exc}")
    error.errno = exc.errno
    return error


@contextlib.contextmanager
def naming(target: Path) -> Iterator[None]:
    """Turn an OSError raised inside the block into `output_error(target, ...)`."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(target, exc) from None


FORCE_FLAG = "--force (-f)"  # the one spelling of the flag every command's refusal names


def refused_existing(target: Path | str, kind: str = "") -> OutputRefusedError:
    """The refusal of an output path that already exists, the same line in every command:
    a regular file (`kind` "") is replaced only with --force; anything else (`kind`: "a folder",
    "a FIFO", ...) never, not even with it."""
    if not kind:
        return OutputRefusedError(f"{target} already exists; pass {FORCE_FLAG} to replace it")
    return OutputRefusedError(
        f"{target} already exists and is {kind}; mnist-vae replaces only regular files, even "
        f"with {FORCE_FLAG}: choose another path"
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"  # pragma: no cover  (doors, whiteouts: not on Linux)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """(real path, (device, inode) or None when absent) of `path`."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _unwritable(folder: Path) -> str:
    """Why `folder` cannot be written in, as the OS would say it ("" when it can)."""
    if os.access(folder, os.W_OK | os.X_OK):
        return ""
    read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def _check_folder(folder: Path, create: bool) -> None:
    if folder.exists():
        if not folder.is_dir():
            raise OutputRefusedError(
                f"output folder {folder} already exists and is not a folder; choose another path"
            )
        if reason := _unwritable(folder):
            raise OutputError(f"output folder {folder} is not writable: {reason}")
        return
    if not create:
        raise OutputError(f"output folder {folder} does not exist; create it first")
    above = _nearest_existing(folder)
    if not above.is_dir():
        raise OutputRefusedError(f"cannot create output folder {folder}: {above} is not a folder")
    if reason := _unwritable(above):
        raise OutputError(f"cannot create output folder {folder} in {above}: {reason}")


class Outputs:
    """The files one command writes, checked at construction, written as one set.

    >>> with Outputs([grid, npy], reads=[decoder_path], force=True) as out:
    ...     out.write_bytes(grid, png)          # staged, invisible to others
    ...     out.commit()                        # every staged file replaces its target at once

    `force` allows replacing existing regular files (without it, an existing target is refused
    before any work: `refused_existing`); `create_dirs` makes missing folders (and removes them
    again if the command ends with nothing committed into them).
    """

    def __init__(
        self,
        targets: Iterable[Path | str],
        *,
        reads: Iterable[Path | str] = (),
        force: bool = False,
        create_dirs: bool = False,
    ) -> None:
        self.targets = [Path(t) for t in targets]
        self._targets = set(self.targets)  # --images-dir stages up to 100,000 of them
        self._create_dirs = create_dirs
        self._staged: dict[Path, Path] = {}  # target -> staged file, in staging order
        self._open: list[tuple[Path, BinaryIO]] = []  # streams still open, by target
        self._staging: dict[Path, Path] = {}  # folder -> its staging folder
        self._locks: list[int] = []
        self._made: list[Path] = []  # folders this object created, outermost first
        self._check(self.targets, [Path(r) for r in reads], force)

    # -- checks, before any work -------------------------------------------------------------

    def _check(self, targets: Sequence[Path], reads: Sequence[Path], force: bool) -> None:
        by_path: dict[str, Path] = {}
        by_inode: dict[tuple[int, int], Path] = {}
        for r in reads:
            real, inode = _identity(r)
            by_path[real] = r
            if inode is not None:
                by_inode[inode] = r
        seen: dict[str, Path] = {}
        folders: dict[Path, str] = {}  # each folder checked once, with its real path
        for target in targets:
            if target.name in ("", ".", ".."):
                raise OutputRefusedError(f"output path {target} is not a file name")
            if target.parent not in folders:
                _check_folder(target.parent, self._create_dirs)
                folders[target.parent] = os.path.realpath(target.parent)
            real = os.path.join(folders[target.parent], target.name)
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                st = None
            except OSError as exc:
                raise output_error(target, exc) from None
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise refused_existing(target, _kind(st.st_mode))
            source = by_path.get(real) or (
                by_inode.get((st.st_dev, st.st_ino)) if st is not None else None
            )
            if source is not None:
                raise OutputRefusedError(
                    f"output path {target} is the input {source} of this command; "
                    "choose another output path"
                )
            if real in seen:
                raise OutputRefusedError(
                    f"outputs {seen[real]} and {target} are the same file; give them "
                    "different paths"
                )
            seen[real] = target
            if st is not None and not force:
                raise refused_existing(target)

    # -- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Outputs:
        try:
            for folder in dict.fromkeys(t.parent for t in self.targets):
                self._make(folder)
                self._lock(folder)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _make(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            with signals.deferred():  # made and recorded together, so it is removed again
                try:
                    path.mkdir()
                except FileExistsError:  # another process made it meanwhile: not ours
                    continue
                except OSError as exc:
                    raise OutputError(
                        f"cannot create output folder {path}: {exc.strerror}"
                    ) from None
                self._made.append(path)

    def _lock(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(
                f"{folder}: another mnist-vae command is writing into this folder; wait for it "
                "to finish or choose another output folder"
            ) from None
        self._locks.append(fd)
        # Holding the lock, no live writer stages here: staging folders left by a process that
        # was killed outright (SIGKILL, power loss) are removed now.
        for stale in folder.glob(f"{_STAGING_PREFIX}*"):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)

    def _close(self) -> None:
        """Remove staged files, staging folders and empty folders made here; release locks."""
        with signals.deferred():
            for _, f in self._open:
                with contextlib.suppress(OSError):
                    f.close()
            self._open.clear()
            for staging in self._staging.values():
                shutil.rmtree(staging, ignore_errors=True)
            self._staging.clear()
            self._staged.clear()
            for fd in self._locks:
                os.close(fd)  # releases the flock
            self._locks.clear()
            for folder in reversed(self._made):
                with contextlib.suppress(OSError):  # not empty: something was committed there
                    folder.rmdir()
            self._made.clear()

    # -- staging -------------------------------------------------------------------------------

    def staged_path(self, target: Path | str) -> Path:
        """Where `target`'s new content is staged (its final name, in a hidden folder beside it),
        for reading it back before the commit, e.g. to verify it."""
        staged = self._staged.get(Path(target))
        if staged is None:
            raise InvalidArgumentError(f"nothing is staged for {target}")
        return staged

    def _staging_folder(self, folder: Path, target: Path) -> Path:
        """The hidden staging folder beside `folder`'s targets (made on first use); errors name
        `target`, never the hidden folder."""
        with signals.deferred(), naming(target):
            if folder not in self._staging:
                self._staging[folder] = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder))
        return self._staging[folder]

    def _stage(self, target: Path | str) -> Path:
        target = Path(target)
        if target not in self._targets:
            raise InvalidArgumentError(f"{target} is not one of this command's outputs")
        staged = self._staging_folder(target.parent, target) / target.name
        self._staged.pop(target, None)
        self._staged[target] = staged  # (re)staged: moves to the end of the commit order
        return staged

    def write_bytes(self, target: Path | str, data: bytes) -> None:
        """Stage `data` as the new content of `target`."""
        staged = self._stage(target)
        with naming(Path(target)):
            staged.write_bytes(data)

    def write_scratch(self, beside: Path | str, data: bytes) -> Path:
        """Write `data` into the staging folder under the name of `beside` (a path in a target
        folder that is not itself an output) and return where: a file the command reads back
        (a reference graph) and never commits. It goes with the staging folder; errors name
        `beside`, like a target's."""
        beside = Path(beside)
        folder = beside.parent
        if beside in self._targets or not any(t.parent == folder for t in self.targets):
            raise InvalidArgumentError(f"{beside} is an output, or not beside one")
        path = self._staging_folder(folder, beside) / beside.name
        with naming(beside):
            path.write_bytes(data)
        return path

    def open(self, target: Path | str) -> BinaryIO:
        """A binary file to stream `target`'s new content into; closed at commit at the latest."""
        staged = self._stage(target)
        with naming(Path(target)):
            f = open(staged, "wb")  # noqa: SIM115  (closed by commit or _close)
        self._open.append((Path(target), f))
        return f

    def commit(self) -> None:
        """Move every staged file onto its target, in staging order, as one step: signals are
        held meanwhile, and if a rename fails the files already replaced get their old content
        back. The staged set is then empty, ready for the next commit."""
        with signals.deferred():
            for opened, f in self._open:
                with naming(opened):
                    f.close()  # flushes: a full disk can show up only now
            self._open.clear()
            done: list[tuple[Path, Path | None]] = []
            target = None
            try:
                for target, staged in self._staged.items():
                    backup = self._keep_old(target, staged)
                    os.replace(staged, target)
                    done.append((target, backup))
            except BaseException as exc:
                for old_target, backup in reversed(done):
                    with contextlib.suppress(OSError):
                        if backup is None:
                            old_target.unlink()
                        else:
                            os.replace(backup, old_target)
                if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                    assert target is not None
                    raise output_error(target, exc) from None
                raise
            finally:
                for _, backup in done:
                    if backup is not None:
                        with contextlib.suppress(OSError):
                            backup.unlink()
                self._staged.clear()
            journal.update((t, None) for t, _ in done)

    @staticmethod
    def _keep_old(target: Path, staged: Path) -> Path | None:
        """A hard link to the file `target` holds now (None when absent), for a rollback; the
        target must still be a regular file (not swapped for a symlink since the check)."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise OutputRefusedError(
                f"output path {target} became {_kind(st.st_mode)} while the command ran; "
                "nothing was replaced"
            )
        backup = staged.with_name(f".old-{staged.name}")
        try:
            os.link(target, backup)
        except OSError:  # a file system without hard links: move the old file aside instead
            os.replace(target, backup)
        return backup


def write_file(path: Path | str, data: bytes, *, force: bool = True) -> None:
    """Write `data` to `path` through `Outputs`: checked, staged, renamed into place."""
    path = Path(path)
    with Outputs([path], force=force) as out:
        out.write_bytes(path, data)
        out.commit()
