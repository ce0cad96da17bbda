"""How a signalled command is judged, and the scenarios it runs in.

A scenario is a command and a pristine folder (inputs and older outputs); its file sets are the
files it replaces together. `judge` decides from what a run did, never from when the signal was
sent: exit 0 with every set new, or 130 / 143 with the one line naming what was kept; every set
old or new and complete; nothing left behind. `_tolerated` names the only ends outside that
promise: the interpreter's own start-up, before any handler exists."""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from harness import TINY_TRAIN, Tiny, sha256
from helpers import expect_interrupted
from PIL import Image

Tree = dict[str, bytes | str]  # processes.tree's form: path -> bytes, or the entry's kind

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
NOTHING_KEPT = "no file was changed"  # how every "nothing was written" line ends
TRAIN_FILES = (
    "model.pt",
    "metrics.jsonl",
    "samples.png",
    "reconstructions.png",
    "loss.png",
    "progress.gif",
)
GRAPH_FILES = ("encoder.onnx", "decoder.onnx", "manifest.json")
TRAIN_GZ = "train-images-idx3-ubyte.gz"
TEST_GZ = "t10k-images-idx3-ubyte.gz"
_IN_RUN = re.compile(r'entrypoints\.py", line \d+, in run\b')  # a traceback from after install()
_HOLDS = re.compile(r"holds (\d+) finished epoch\(s\)")
_FRAME = re.compile(r'File "(?:[^"]*/)?([^"/]+/[^"/]+)", line (\d+), in (\S+)')


def _alternate(n: int) -> signal.Signals:
    """SIGINT or SIGTERM for the nth moment, so 'before' and 'after' moments get both."""
    return signal.SIGINT if (n + n // 2) % 2 == 0 else signal.SIGTERM


# -- how a run is judged ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """How one command ended. `signum` 0: no signal reached it (it had finished)."""

    where: str  # the moment: a delay, or a hook's report
    signum: int
    code: int  # negative: killed by that signal
    stdout: str
    stderr: str

    def result(self) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], self.code, self.stdout, self.stderr)

    def __str__(self) -> str:
        sent = signal.Signals(self.signum).name if self.signum else "no signal"
        return f"{sent} at {self.where} -> exit {self.code}"


@dataclass(frozen=True)
class FileSet:
    """Files a command replaces together: after any signal they all hold what they held before
    (absent ones stay absent) or they are all new, and `check` finds the new set complete."""

    targets: tuple[str, ...]  # relative to the run's root, as the command is told them
    check: Callable[[Tree, bool], list[str]]  # problems with the new set; bool: command finished
    kept: Callable[[Tree], list[str]]  # what the interrupted line must say when the set is new


@dataclass(frozen=True)
class Scenario:
    """A command, the folder it runs in (inputs and older outputs) and what it may change."""

    name: str
    root: Path  # pristine: copied for every run, never run in itself
    args: tuple[str, ...]  # console script, then its arguments (paths relative to the root)
    sets: tuple[FileSet, ...]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Verdict:
    """What was wrong with a run, and which known end outside the promise it was, if any."""

    problems: list[str] = field(default_factory=list)
    line: list[str] = field(default_factory=list)  # the line misstates what was kept
    accepted: str = ""  # see `_tolerated`


def judge_files(
    before: Tree, after: Tree, sets: Sequence[FileSet], finished: bool
) -> tuple[list[str], list[FileSet]]:
    """Problems with the folder after a run, and the sets that were replaced. Every set is old
    or new and complete; every other entry is as it was; nothing new is left but the folders
    holding a new set's files (no staging folder, no temporary or backup file)."""
    problems: list[str] = []
    new: list[FileSet] = []
    owned = {t for s in sets for t in s.targets}
    for fs in sets:
        changed = [t for t in fs.targets if after.get(t) != before.get(t)]
        if not changed:
            continue
        new.append(fs)
        stale = [
            t
            for t in fs.targets
            if not isinstance(after.get(t), bytes) or after.get(t) == before.get(t)
        ]
        if stale:
            problems.append(f"half a set: {changed[:3]} replaced but not {stale[:3]}")
        else:
            problems += fs.check(after, finished)
    folders = {str(p) for fs in new for t in fs.targets for p in PurePosixPath(t).parents}
    for path in sorted(set(before) | set(after)):
        if path in owned:
            continue
        if path not in after:
            problems.append(f"lost: {path}")
        elif path not in before:
            if not (path in folders and after[path] == "folder"):
                problems.append(f"left behind: {path}")
        elif before[path] != after[path]:
            problems.append(f"changed: {path}")
    return problems, new


def _tolerated(run: Run, new: int, sets: int) -> str:
    """The known end outside the promise a run with an intact folder came to ("" if none):
    before any handler exists, in the interpreter's own start-up."""
    killed_quietly = run.code == -run.signum and not run.stderr
    early = "KeyboardInterrupt" in run.stderr and not _IN_RUN.search(run.stderr)
    kinds = {
        "killed before the handlers": killed_quietly and not new,
        "traceback before the handlers": early and not new and run.code != 0,
        "interpreter start-up message": early and new == sets and run.code == 0,
    }
    return next((kind for kind, seen in kinds.items() if seen), "")


def judge(run: Run, before: Tree, after: Tree, sets: Sequence[FileSet]) -> Verdict:
    """Judge one run against the promise: exit 0 with every set new, or 128 + the signal and
    the one line naming what was kept. Any other end is a problem, unless the folder is intact
    and `_tolerated` knows it: then it is `accepted`, and the caller decides."""
    verdict = Verdict()
    verdict.problems, new = judge_files(before, after, sets, run.code == 0)
    if run.code == 0 and not run.stderr.strip():
        if len(new) != len(sets):
            verdict.problems.append("exit 0, but not every output was written")
    elif run.signum and run.code == EXIT[signal.Signals(run.signum)]:
        try:
            line = expect_interrupted(run.result(), run.code)
        except AssertionError as exc:
            verdict.problems.append(f"not the promised line ({exc}): {run.stderr[-400:]!r}")
            return verdict
        for fs in new:
            with contextlib.suppress(Exception):  # a broken set is already a problem
                for text in fs.kept(after):
                    if text not in line:
                        verdict.line.append(f"{line!r} does not say {text!r}")
        if not new and not line.endswith(NOTHING_KEPT):
            verdict.line.append(f"{line!r} claims a file was kept, none was changed")
    elif not verdict.problems and (kind := _tolerated(run, len(new), len(sets))):
        verdict.accepted = kind
    else:
        verdict.problems.append(f"exit {run.code}, stderr {run.stderr[-400:]!r}")
    return verdict


# -- what a complete new set looks like ------------------------------------------------------


def _data(after: Tree, path: str) -> bytes:
    value = after[path]
    assert isinstance(value, bytes), f"{path} is {value}"
    return value


class Checks:
    """Reads new files through the toolkit's own loaders, once per distinct content."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._checkpoints: dict[str, Any] = {}
        self._graphs: dict[str, str] = {}

    def _place(self, files: Mapping[str, bytes]) -> Path:
        folder = self.scratch / sha256(b"".join(sha256(d).encode() for d in files.values()))[:16]
        if not folder.exists():
            folder.mkdir(parents=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
        return folder

    def checkpoint(self, data: bytes) -> Any:
        """The Checkpoint that `vae_train.checkpoint.load_checkpoint` reads from these bytes."""
        from vae_train.checkpoint import load_checkpoint

        key = sha256(data)
        if key not in self._checkpoints:
            self._checkpoints[key] = load_checkpoint(self._place({"model.pt": data}) / "model.pt")
        return self._checkpoints[key]

    def graphs(self, files: Mapping[str, bytes]) -> str:
        """Why the runtime refuses these graphs beside their manifest ("" if it loads both)."""
        from vae_runtime import Decoder, Encoder

        folder = self._place(files)
        if str(folder) not in self._graphs:
            try:
                Encoder.load(folder / "encoder.onnx")
                Decoder.load(folder / "decoder.onnx")
                self._graphs[str(folder)] = ""
            except Exception as exc:
                self._graphs[str(folder)] = f"the runtime refuses the new graphs: {exc}"
        return self._graphs[str(folder)]


def _kept_names(targets: Sequence[str]) -> Callable[[Tree], list[str]]:
    """The runtime commands' line: 'kept the complete <each target>; nothing else ...'."""
    return lambda after: ["kept the complete ", *targets]


def train_set(out: str, seed: int, epochs: int, checks: Checks) -> FileSet:
    """model.pt, metrics.jsonl and both figures of one run: model.pt loads, its epoch k is the
    number of metrics lines (1..k), it comes from this run (its seed), figures decode."""
    targets = tuple(f"{out}/{name}" for name in TRAIN_FILES)

    def check(after: Tree, finished: bool) -> list[str]:
        try:
            ckpt = checks.checkpoint(_data(after, targets[0]))
        except Exception as exc:
            return [f"{targets[0]} does not load: {exc}"]
        lines = _data(after, targets[1]).decode().splitlines()
        problems = []
        if [json.loads(line)["epoch"] for line in lines] != list(range(1, ckpt.epoch + 1)):
            problems.append(f"model.pt holds epoch {ckpt.epoch}, metrics has {len(lines)} lines")
        if ckpt.run.get("seed") != seed or not 1 <= ckpt.epoch <= epochs:
            problems.append(f"model.pt is not from this run: {ckpt.run}, epoch {ckpt.epoch}")
        if finished and ckpt.epoch != epochs:
            problems.append(f"a finished run left model.pt at epoch {ckpt.epoch} of {epochs}")
        for t in targets[2:]:  # progress.gif: one frame per finished epoch, the others one
            frames = ckpt.epoch if t.endswith(".gif") else 1
            problems += [p for p in [_image_problem(_data(after, t), t, frames)] if p]
        return problems

    def kept(after: Tree) -> list[str]:
        return [f"holds {checks.checkpoint(_data(after, targets[0])).epoch} finished epoch(s)"]

    return FileSet(targets, check, kept)


def export_set(out: str, checkpoint: bytes, checks: Checks) -> FileSet:
    """encoder.onnx, decoder.onnx and manifest.json of one export: the manifest lists both
    graphs' SHA-256 and the exported checkpoint's, and the runtime loads the pair through it."""
    targets = tuple(f"{out}/{name}" for name in GRAPH_FILES)

    def check(after: Tree, finished: bool) -> list[str]:
        files = {PurePosixPath(t).name: _data(after, t) for t in targets}
        manifest = json.loads(files["manifest.json"])
        problems = [
            f"manifest.json does not list {name}'s SHA-256"
            for name in GRAPH_FILES[:2]
            if manifest["files"][name]["sha256"] != sha256(files[name])
        ]
        if manifest["checkpoint"]["sha256"] != sha256(checkpoint):
            problems.append("manifest.json names another checkpoint")
        return problems + [p for p in [checks.graphs(files)] if p]

    return FileSet(targets, check, _kept_names(targets))


def outputs_set(checks: Mapping[str, Callable[[bytes, str], str]]) -> FileSet:
    """Files of a runtime command, each with its own check (a problem, or "")."""
    targets = tuple(checks)

    def check(after: Tree, finished: bool) -> list[str]:
        return [p for t, ok in checks.items() if (p := ok(_data(after, t), t))]

    return FileSet(targets, check, _kept_names(targets))


def _image_problem(data: bytes, name: str, frames: int = 1) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            found = getattr(image, "n_frames", 1)
    except Exception as exc:
        return f"{name} does not decode: {exc}"
    return "" if found == frames else f"{name} has {found} frames, expected {frames}"


def _gif(frames: int) -> Callable[[bytes, str], str]:
    return lambda data, name: _image_problem(data, name, frames)


def _npy(shape: tuple[int, ...]) -> Callable[[bytes, str], str]:
    """An .npy check: float32 of the full declared shape, every byte there, the last image
    decoded (not a preallocated hole of zeros)."""

    def ok(data: bytes, name: str) -> str:
        stream = io.BytesIO(data)
        if np.lib.format.read_magic(stream) != (1, 0):  # NpyWriter writes format 1.0
            return f"{name} is not an .npy file of format 1.0"
        found, _, dtype = np.lib.format.read_array_header_1_0(stream)
        body = len(data) - stream.tell()
        if found != shape or dtype != np.float32 or body != 4 * int(np.prod(shape)):
            return f"{name} is {dtype} {found} with {body} bytes, expected float32 {shape}"
        last = np.frombuffer(data, np.float32, offset=len(data) - 4 * 784)
        return "" if last.any() else f"{name}'s last image is all zeros"

    return ok


def download_set(path: str, data: bytes, shown: str) -> FileSet:
    """One downloaded file: absent (as before) or exactly the mirror's bytes."""

    def check(after: Tree, finished: bool) -> list[str]:
        return [] if after[path] == data else [f"{path} is not the file the mirror served"]

    return FileSet((path,), check, lambda after: ["kept the complete ", shown])


# -- the scenarios: pristine folders and commands --------------------------------------------


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 90).save(buffer, format="PNG")
    return buffer.getvalue()


def _old_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 1, 28, 28), 0.5, np.float32))
    return buffer.getvalue()


def _old_gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 30).save(buffer, format="GIF")
    return buffer.getvalue()


class World:
    """Builds the scenarios' pristine folders (once each) from the tiny model and its export."""

    def __init__(self, tiny: Tiny, root: Path, second: Path) -> None:
        self.tiny = tiny
        self.root = root
        self.second = second  # another model.pt (seed 7): what vae-export exports
        self.checks = Checks(root / "scratch")
        self._built: dict[str, Scenario] = {}
        onnx = tiny.decoder.parent
        self._graphs = {f"onnx/{name}": (onnx / name).read_bytes() for name in GRAPH_FILES}
        self._notes = {"out/notes.txt": b"the user's own file, beside the outputs\n"}

    def _make(
        self, name: str, files: Mapping[str, bytes], args: Sequence[str], sets: Sequence[FileSet]
    ) -> Scenario:
        if name not in self._built:
            folder = self.root / name
            folder.mkdir(parents=True)
            for rel, data in files.items():
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                (folder / rel).write_bytes(data)
            self._built[name] = Scenario(name, folder, tuple(args), tuple(sets))
        return self._built[name]

    def train(self, *, fresh: bool, epochs: int) -> Scenario:
        """vae-train --seed 2 on the tiny data: into a folder holding an older run (seed 1),
        with --force, or into `new/run`, which does not exist yet."""
        data = {f"data/{p.name}": p.read_bytes() for p in sorted(self.tiny.data.iterdir())}
        older = {f"out/{n}": (self.tiny.model.parent / n).read_bytes() for n in TRAIN_FILES}
        out = "new/run" if fresh else "out"
        files = data if fresh else {**data, **older, **self._notes}
        args = ["vae-train", "--data-dir", "data", "--out", out, "--epochs", str(epochs)]
        args += ["--seed", "2", *TINY_TRAIN, *([] if fresh else ["--force"])]
        name = f"train-{'fresh' if fresh else 'force'}-{epochs}"
        return self._make(name, files, args, [train_set(out, 2, epochs, self.checks)])

    def export(self) -> Scenario:
        """vae-export of the second model into a folder holding tiny's export, --force."""
        model = self.second.read_bytes()
        older = {f"out/{n}": self._graphs[f"onnx/{n}"] for n in GRAPH_FILES}
        files = {"model/model.pt": model, **older, **self._notes}
        args = ["vae-export", "model/model.pt", "-o", "out", "--force"]
        return self._make("export", files, args, [export_set("out", model, self.checks)])

    def generate_npy(self, count: int) -> Scenario:
        """vae-generate -n COUNT --npy over an older samples.npy, no grid."""
        files = {**self._graphs, "out/samples.npy": _old_npy(), **self._notes}
        args = ["vae-generate", "--force", "--onnx", "onnx/decoder.onnx", "-n", str(count)]
        args += ["--npy", "out/samples.npy", "--no-grid"]
        sets = [outputs_set({"out/samples.npy": _npy((count, 1, 28, 28))})]
        return self._make(f"generate-npy-{count}", files, args, sets)

    def generate_images(self, count: int) -> Scenario:
        """vae-generate -n COUNT --images-dir out/each (not there yet) and a grid over an older
        samples.png: the COUNT files and the grid are one set."""
        from vae_runtime.images import image_file_names

        files = {**self._graphs, "out/samples.png": _png(), **self._notes}
        args = [
            "vae-generate",
            "--force",
            "--onnx",
            "onnx/decoder.onnx",
            "-n",
            str(count),
            "--seed",
            "3",
        ]
        args += ["--images-dir", "out/each", "-o", "out/samples.png"]
        each = {f"out/each/{n}": _image_problem for n in image_file_names("sample", count)}
        sets = [outputs_set({**each, "out/samples.png": _image_problem})]
        return self._make(f"generate-images-{count}", files, args, sets)

    def generate_small(self) -> Scenario:
        """vae-generate's default 5x5 grid over an older one."""
        files = {**self._graphs, "out/samples.png": _png(), **self._notes}
        args = ["vae-generate", "--force", "--onnx", "onnx/decoder.onnx", "-o", "out/samples.png"]
        sets = [outputs_set({"out/samples.png": _image_problem})]
        return self._make("generate-small", files, args, sets)

    def interpolate(self) -> Scenario:
        """vae-interpolate: grid, GIF and .npy, each over an older file."""
        files = {**self._graphs, **self._notes}
        files |= {"out/path.png": _png(), "out/path.gif": _old_gif(), "out/path.npy": _old_npy()}
        args = ["vae-interpolate", "--force", "--onnx", "onnx/decoder.onnx", "--steps", "10"]
        args += ["-o", "out/path.png", "--gif", "out/path.gif", "--npy", "out/path.npy"]
        checks = {"out/path.npy": _npy((10, 1, 28, 28)), "out/path.gif": _gif(18)}
        sets = [outputs_set({**checks, "out/path.png": _image_problem})]
        return self._make("interpolate", files, args, sets)

    def reconstruct(self) -> Scenario:
        """vae-reconstruct of ten test digits: grid and .npy over older files."""
        files = {**self._graphs, **self._notes, "out/rec.png": _png(), "out/rec.npy": _old_npy()}
        files[f"data/{TEST_GZ}"] = (self.tiny.data / TEST_GZ).read_bytes()
        args = ["vae-reconstruct", "--force", "--encoder", "onnx/encoder.onnx"]
        args += ["--decoder", "onnx/decoder.onnx", f"data/{TEST_GZ}", "-n", "10"]
        args += ["-o", "out/rec.png", "--npy", "out/rec.npy"]
        sets = [outputs_set({"out/rec.png": _image_problem, "out/rec.npy": _npy((10, 1, 28, 28))})]
        return self._make("reconstruct", files, args, sets)

    def train_download(self, name: str, run_root: Path) -> Scenario:
        """vae-train with no data folder: MNIST is downloaded into $XDG_CACHE_HOME (not there
        yet; in `run_root`, where the lab runs it), then it trains into new/run."""
        cache = "cache/mnist-vae/mnist"
        args = ["vae-train", "--out", "new/run", "--epochs", "1", *TINY_TRAIN, "-q"]
        sets = [
            download_set(
                f"{cache}/{n}", (self.tiny.data / n).read_bytes(), f"{run_root}/{cache}/{n}"
            )
            for n in (TRAIN_GZ, TEST_GZ)
        ]
        sets.append(train_set("new/run", 1, 1, self.checks))
        scenario = self._make(name, {}, args, sets)
        env = {"XDG_CACHE_HOME": str(run_root / "cache")}
        return Scenario(scenario.name, scenario.root, scenario.args, scenario.sets, env)

    def for_command(self, name: str) -> Scenario:
        """A small scenario of console script `name`."""
        return {
            "vae-train": lambda: self.train(fresh=False, epochs=1),
            "vae-export": self.export,
            "vae-generate": self.generate_small,
            "vae-interpolate": self.interpolate,
            "vae-reconstruct": self.reconstruct,
        }[name]()
