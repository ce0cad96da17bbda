"""Real OS write faults, end to end, for all five commands: EFBIG, ENOSPC, EROFS and EACCES.

Real EFBIG (RLIMIT_FSIZE swept over the sizes of each command's outputs), real ENOSPC (a nearly
full tmpfs), real EROFS (a tmpfs remounted read-only), real EACCES (uid 65534 and a 0555
folder): one line naming the user's path and the OS reason, exit 1, every file as it was, no
staging file or folder left, no folder the command made left. The faults run in real
processes: the runtime's console scripts under RLIMIT_FSIZE, and children of the fork server
(`harness.Server`), each with its own rlimit, uid and file system. Where a test passes
`graphs`, those children return the session's already exported graphs instead of running
torch.onnx; one test runs the real `vae-export` console script end to end."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from disk import (
    CACHED,
    DEC,
    ENC,
    EXPORT_FILES,
    TEST_IMAGES,
    TRAIN,
    TRAIN_FILES,
    _images,
    expect_fault,
    leftovers,
    populate,
    words,
    write_old,
)
from harness import NOBODY, Server, Tiny, run, skip_unless_nobody_works
from helpers import expect_error, tree

# -- real EFBIG at every write, from RLIMIT_FSIZE ----------------------------------


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


COMBOS = {
    "generate-all": Combo(
        "vae-generate",
        words(
            f"--force --onnx {DEC} -n 30 --npy fresh/deep/s.npy --images-dir out/imgs -o out/g.png"
        ),
        ("fresh/deep/s.npy", *_images("out/imgs", 30), "out/g.png"),
        fresh=("fresh",),
    ),
    "generate-images": Combo(
        "vae-generate",
        words(f"--force --onnx {DEC} -n 30 --scale 2 --images-dir out/imgs -o out/g.png"),
        (*_images("out/imgs", 30), "out/g.png"),
    ),
    "interpolate-all": Combo(
        "vae-interpolate",
        words(f"--force --onnx {DEC} --npy out/i.npy --gif out/i.gif -o out/i.png"),
        ("out/i.npy", "out/i.gif", "out/i.png"),
    ),
    "interpolate-grid-last": Combo(
        "vae-interpolate",
        words(f"--force --onnx {DEC} --no-gif --steps 2 --scale 32 --npy out/i.npy -o out/i.png"),
        ("out/i.npy", "out/i.png"),
    ),
    "reconstruct": Combo(
        "vae-reconstruct",
        words(
            f"--force --encoder {ENC} --decoder {DEC} {TEST_IMAGES} -n 2 --scale 16 --npy out/r.npy"
        )
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


# -- real ENOSPC and EROFS on a tmpfs ---------------------------------------------


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
        words(f"--force --onnx {DEC} -n 30 --npy disk/s.npy -o disk/g.png"),
        32 << 10,
        "disk/s.npy",
        ("disk/s.npy", "disk/g.png"),
        reason="bytes do not fit on the disk",
    ),
    "generate-images": Full(
        "vae-generate",
        words(f"--force --onnx {DEC} -n 30 --scale 2 --images-dir disk/imgs -o disk/g.png"),
        24 << 10,
        r"disk/imgs/sample_000\d\d\.png",
        ("disk/g.png", *_images("disk/imgs", 3)),
    ),
    "interpolate": Full(
        "vae-interpolate",
        words(f"--force --onnx {DEC} --npy disk/i.npy --gif disk/i.gif -o disk/i.png"),
        64 << 10,
        "disk/i.gif",
        ("disk/i.gif", "disk/i.png"),
    ),
    "reconstruct": Full(
        "vae-reconstruct",
        words(f"--force --encoder {ENC} --decoder {DEC} {TEST_IMAGES} -n 20 --scale 8")
        + words("--npy disk/r.npy -o disk/r.png"),
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
    "vae-generate": words(f"--force --onnx {DEC} -n 3 --npy disk/s.npy -o disk/g.png"),
    "vae-interpolate": words(
        f"--force --onnx {DEC} --npy disk/i.npy --gif disk/i.gif -o disk/i.png"
    ),
    "vae-reconstruct": words(f"--force --encoder {ENC} --decoder {DEC} a.png -o disk/r.png"),
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


# -- real EACCES, as uid 65534 ------------------------------------------------------


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


ACCESS = {
    "vae-generate": words(f"--force --onnx {DEC} -n 3 --npy box/s.npy -o box/g.png"),
    "vae-interpolate": words(f"--force --onnx {DEC} --gif box/i.gif -o box/i.png"),
    "vae-reconstruct": words(
        f"--force --encoder {ENC} --decoder {DEC} b.png --npy box/r.npy -o box/r.png"
    ),
    "vae-train": (*TRAIN, "--out", "box", "--force"),
    "vae-export": words("run/model.pt -o box -q --force"),
}
OLD_IN_BOX = ("box/g.png", "box/i.png", "box/r.npy", "box/model.pt", "box/manifest.json")


@pytest.mark.parametrize("name", list(ACCESS))
def test_a_folder_the_user_may_not_write_is_refused_before_any_work(
    public: Path, server: Server, name: str
) -> None:
    """uid 65534 into root's 0555 folder: refused by the checks, before any work."""
    skip_unless_nobody_works()
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
    skip_unless_nobody_works()
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
    """The line names the user's path and the OS's reason."""
    if fault == "erofs":
        root: Path = request.getfixturevalue("work")
        disk = request.getfixturevalue("tmpfs")("1m")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = run(["vae-generate", "--force", "--onnx", DEC, "-o", "disk/g.png"], root)
        expect_error(result, 1, r"\bdisk\b.*Read-only file system")
    else:
        skip_unless_nobody_works()
        root = request.getfixturevalue("public")
        (root / "box").mkdir(mode=0o555)
        (root / "box").chmod(0o555)
        home = {"HOME": str(root.parent / "home")}
        result = server.run(
            "vae-generate",
            ["--force", "--onnx", DEC, "-o", "box/g.png"],
            root,
            user=NOBODY,
            env=home,
        )
        expect_error(result, 1, r"\bbox\b.*Permission denied")
