"""Signals at any moment of any command (issue 9, section 3).

SIGINT or SIGTERM, whenever it comes, ends a command with exit 130 / 143 and one line saying what
was kept (no colour codes: stderr is a pipe here); no temporary file stays behind, nothing that
existed before is lost, and files written as a set change together or not at all. The signals
come four ways, each at many moments:

- time sweeps: the real console script, started with stdout and stderr piped, gets the signal
  after a delay: from the first millisecond of start-up (before Python has installed any
  handler) to the end, at fractions of a reference run's duration, or a moment after one of the
  run's own output lines (an epoch kept, the graphs exported, the summary printed).
- hooks: a wrapper process (the "lab", `_lab_main`) patches the functions that matter (renames,
  staging folders, whole-file writes, commits, .npy batches and preallocation, PNG and GIF
  encoding, the ONNX export, the onnx checker, verification, graph loads, training steps,
  evaluation, checkpoint serialisation) so that each call reports itself just before
  and just after it happens, then calls the real entry point. Report N signals the process
  itself, for every N the command reaches. Torch-free commands are forked afresh from a warm lab
  for every N. Training and export run once: at every report the lab forks the command where it
  stands and signals the copy (which only unwinds: torch computes nothing after a fork), then
  puts the folder back as it was at the fork (those commands write whole files, so the folder
  restored is the command's state restored).
- imports: a signal at the first import of a package, and as a native extension initialises.
- downloads: a server on 127.0.0.1 trickles the gzip files and signals the downloading process
  after a chosen number of chunks, through the library and through `vae-train` itself.

Every run is judged by `judge`, from what the run did, never from when the signal was sent.
The time sweeps tolerate only the inherent window before any Python code of the toolkit runs
(the interpreter's own start-up), in the exact form `_tolerated` describes and with the folder
intact; they print what they tolerated (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib
import inspect
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
from helpers import expect_interrupted, tree
from PIL import Image
from processes import TINY_TRAIN, Tiny, command

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
ENTRIES = {  # console script -> its entry point (pyproject's [project.scripts])
    "vae-train": "vae_train.__main__:main",
    "vae-export": "vae_export.__main__:main",
    "vae-generate": "vae_runtime.entrypoints:vae_generate",
    "vae-interpolate": "vae_runtime.entrypoints:vae_interpolate",
    "vae-reconstruct": "vae_runtime.entrypoints:vae_reconstruct",
}
_IN_RUN = re.compile(r'_entry\.py", line \d+, in run\b')  # a traceback from after install()
_HOLDS = re.compile(r"holds (\d+) finished epoch\(s\)")
_FRAME = re.compile(r'File "(?:[^"]*/)?([^"/]+/[^"/]+)", line (\d+), in (\S+)')
FAULTS = Path(__file__).parent
LAB_TIMEOUT_S = 900.0  # for a lab's whole work: far above what it takes, for loaded machines


def _alternate(n: int) -> signal.Signals:
    """SIGINT or SIGTERM for the nth moment, so 'before' and 'after' moments get both."""
    return signal.SIGINT if (n + n // 2) % 2 == 0 else signal.SIGTERM


def _env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment of every command: no debug tracebacks, no real data folder, unbuffered
    stdout (so output lines carry their moment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAE_DEBUG", "VAE_DATA_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
        folder = self.scratch / _sha(b"".join(_sha(d).encode() for d in files.values()))[:16]
        if not folder.exists():
            folder.mkdir(parents=True)
            for name, data in files.items():
                (folder / name).write_bytes(data)
        return folder

    def checkpoint(self, data: bytes) -> Any:
        """The Checkpoint that `vae_train.checkpoint.load_checkpoint` reads from these bytes."""
        from vae_train.checkpoint import load_checkpoint

        key = _sha(data)
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
            if manifest["files"][name]["sha256"] != _sha(files[name])
        ]
        if manifest["checkpoint"]["sha256"] != _sha(checkpoint):
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
        args = ["vae-generate", "--onnx", "onnx/decoder.onnx", "-n", str(count)]
        args += ["--npy", "out/samples.npy", "--no-grid"]
        sets = [outputs_set({"out/samples.npy": _npy((count, 1, 28, 28))})]
        return self._make(f"generate-npy-{count}", files, args, sets)

    def generate_images(self, count: int) -> Scenario:
        """vae-generate -n COUNT --images-dir out/each (not there yet) and a grid over an older
        samples.png: the COUNT files and the grid are one set."""
        from vae_runtime.images import image_file_names

        files = {**self._graphs, "out/samples.png": _png(), **self._notes}
        args = ["vae-generate", "--onnx", "onnx/decoder.onnx", "-n", str(count), "--seed", "3"]
        args += ["--images-dir", "out/each", "-o", "out/samples.png"]
        each = {f"out/each/{n}": _image_problem for n in image_file_names("sample", count)}
        sets = [outputs_set({**each, "out/samples.png": _image_problem})]
        return self._make(f"generate-images-{count}", files, args, sets)

    def generate_small(self) -> Scenario:
        """vae-generate's default 5x5 grid over an older one."""
        files = {**self._graphs, "out/samples.png": _png(), **self._notes}
        args = ["vae-generate", "--onnx", "onnx/decoder.onnx", "-o", "out/samples.png"]
        sets = [outputs_set({"out/samples.png": _image_problem})]
        return self._make("generate-small", files, args, sets)

    def interpolate(self) -> Scenario:
        """vae-interpolate: grid, GIF and .npy, each over an older file."""
        files = {**self._graphs, **self._notes}
        files |= {"out/path.png": _png(), "out/path.gif": _old_gif(), "out/path.npy": _old_npy()}
        args = ["vae-interpolate", "--onnx", "onnx/decoder.onnx", "--steps", "10"]
        args += ["-o", "out/path.png", "--gif", "out/path.gif", "--npy", "out/path.npy"]
        checks = {"out/path.npy": _npy((10, 1, 28, 28)), "out/path.gif": _gif(18)}
        sets = [outputs_set({**checks, "out/path.png": _image_problem})]
        return self._make("interpolate", files, args, sets)

    def reconstruct(self) -> Scenario:
        """vae-reconstruct of ten test digits: grid and .npy over older files."""
        files = {**self._graphs, **self._notes, "out/rec.png": _png(), "out/rec.npy": _old_npy()}
        files[f"data/{TEST_GZ}"] = (self.tiny.data / TEST_GZ).read_bytes()
        args = ["vae-reconstruct", "--encoder", "onnx/encoder.onnx"]
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


# -- time sweeps: the real console scripts, a signal after a delay ----------------------------


def _launch(
    scenario: Scenario,
    root: Path,
    argv: Sequence[str] = (),
    env: Mapping[str, str] = {},
    **options: Any,
) -> subprocess.Popen[str]:
    """Start the scenario's console script (or `argv`) in `root`, stdout and stderr piped."""
    return subprocess.Popen(
        list(argv) or [command(scenario.args[0]), *scenario.args[1:]],
        cwd=root,
        env=_env({**scenario.env, **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def reference(scenario: Scenario, work: Path) -> tuple[Run, Tree, float]:
    """One run without a signal: how it ended, the folder after it, and how long it took."""
    root = work / f"{scenario.name}-reference"
    shutil.copytree(scenario.root, root, symlinks=True)
    start = time.monotonic()
    proc = _launch(scenario, root)
    out, err = proc.communicate(timeout=300)
    total = time.monotonic() - start
    after = tree(root)
    shutil.rmtree(root)
    run = Run("the end (no signal)", 0, proc.returncode, out, err)
    assert not judge(run, tree(scenario.root), after, scenario.sets).problems, run
    return run, after, total


@dataclass(frozen=True)
class Moment:
    """When a sweep sends its signal: `delay` seconds after the start, or, with `line`, after
    this run's `line`-th line of stdout (an epoch kept, the graphs exported)."""

    delay: float
    line: int = 0

    def __str__(self) -> str:
        return f"{self.delay:.3f} s" + (f" after line {self.line}" if self.line else "")


def sweep(
    scenario: Scenario, moments: Sequence[Moment], work: Path, workers: int = 3
) -> list[tuple[Run, Tree]]:
    """Start the command in a fresh copy of its folder for each moment, a few at a time, and
    send SIGINT or SIGTERM (alternately) at that moment if it is still running."""

    def one(index: int) -> tuple[Run, Tree]:
        moment, signum = moments[index], _alternate(index)
        root = work / f"{scenario.name}-{index}"
        shutil.copytree(scenario.root, root, symlinks=True)
        proc = _launch(scenario, root)
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        seen = threading.Condition()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with seen:
                    lines.append(line)
                    seen.notify()
            with seen:
                lines.append("")  # the end
                seen.notify()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        with seen:
            seen.wait_for(lambda: len(lines) >= moment.line or "" in lines, timeout=300)
        time.sleep(max(moment.delay, 0.0))
        sent = proc.poll() is None
        if sent:
            proc.send_signal(signum)
        err = proc.stderr.read()
        proc.wait(timeout=300)
        reader.join(timeout=60)
        after = tree(root)
        shutil.rmtree(root)
        where = f"{moment}" + ("" if sent else " (it had finished)")
        return Run(where, signum if sent else 0, proc.returncode, "".join(lines), err), after

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(moments))))


def assert_sweep(scenario: Scenario, runs: Sequence[tuple[Run, Tree]], checks: Checks) -> None:
    """Judge every run of a sweep and fail with all problems at once. What `_tolerated` knows
    passes, and is printed."""
    before = tree(scenario.root)
    failures, seen, tolerated = [], Counter[str](), []
    for run, after in runs:
        verdict = judge(run, before, after, scenario.sets)
        line = verdict.line
        failures += [f"{run}: {p}" for p in verdict.problems + line]
        seen[verdict.accepted or (f"exit {run.code}" if run.signum else "finished first")] += 1
        if verdict.accepted:
            frames = _FRAME.findall(run.stderr)  # the innermost last
            raised = " (at {}:{} in {})".format(*frames[-1]) if frames else ""
            tolerated.append(f"{verdict.accepted}: {run}{raised}")
    print(f"\n{scenario.name}: {len(runs)} runs: {dict(seen)}", *tolerated, sep="\n  ")
    assert not failures, "\n".join(failures)


# -- the lab: a wrapper process whose hooked functions signal at the Nth call -----------------

_LAB_MAIN = (
    "import sys; sys.path[:0] = sys.argv[2:]; "
    "import test_faults_signals as lab; lab._lab_main(sys.argv[1])"
)
_LAB: _Lab | None = None  # the lab of this process (set in a lab process only)


def _lab_main(spec_file: str) -> None:
    """Entry point of a lab process: import what every case shares, patch the hooks, run the
    jobs; each case goes to report.jsonl in the lab's folder (files by SHA-256 in store/)."""
    global _LAB
    spec = json.loads(Path(spec_file).read_text())
    for name in spec["preload"]:
        importlib.import_module(name)
    _LAB = _Lab(Path(spec["work"]))
    for hook in spec["hooks"]:
        _patch(hook)
    for job in spec["jobs"]:
        _LAB.run(job)


def _patch(spec: str) -> None:
    """Replace "module:Owner.name" with a version that reports before and after each call."""
    module, _, path = spec.partition(":")
    owner: Any = importlib.import_module(module)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    raw = inspect.getattr_static(owner, name)
    if isinstance(raw, classmethod | staticmethod):
        setattr(owner, name, type(raw)(_reporting(spec, raw.__func__)))
    else:
        setattr(owner, name, _reporting(spec, raw))


def _reporting(label: str, real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def hooked(*args: Any, **kwargs: Any) -> Any:
        assert _LAB is not None
        _LAB.event(f"{label}:before")
        result = real(*args, **kwargs)
        _LAB.event(f"{label}:after")
        return result

    return hooked


def _call(entry: str, argv: Sequence[str]) -> int:
    """Run a console script's entry point with `argv`; its exit code."""
    module, _, name = entry.partition(":")
    main = getattr(importlib.import_module(module), name)
    sys.argv = list(argv)
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # never a command's way out: the traceback goes into the report
        traceback.print_exc()
        return 99
    return 0


def _output_to(case: Path) -> None:
    """Point file descriptors 1 and 2 at case/stdout and case/stderr."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(case / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)


def _leave(code: int) -> None:
    """End a forked copy at once: its output flushed, nothing of its parent's run at exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reap(pid: int, limit: float = 120.0) -> tuple[int, bool]:
    """Wait for a forked copy: its exit status (negative: killed), and whether it hung."""
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL, True
        time.sleep(0.001)


def _digest(root: Path, store: Path) -> dict[str, str]:
    """`tree(root)`, with each file's bytes kept once in `store` under their SHA-256."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            data = path.read_bytes()
            blob = store / _sha(data)
            if not blob.exists():
                with open(blob, "wb") as f:
                    f.write(data)
            found[key] = f"sha256:{blob.name}"
        else:
            found[key] = "folder" if path.is_dir() else "special"
    return found


def _set_env(env: Mapping[str, str]) -> None:
    os.environ.update(env)


def _patch_download(mirror: str, md5: Mapping[str, str]) -> None:
    """Make vae-train download from `mirror` ({pid}: this process), checking these MD5s."""
    from vae_train import data, training

    data.OFFICIAL_MD5.update(md5)  # type: ignore[attr-defined]  (a dict, read at call time)
    defaults = training.train.__kwdefaults__
    assert defaults is not None
    defaults["mirrors"] = (mirror.format(pid=os.getpid()),)


class _Lab:
    """Runs jobs whose hooked calls report to `event`. Roles: "child" (a fresh fork that
    signals itself at report number `target`), "runner" (the one real run of a branch job,
    forking a "victim" at every report), "victim" and "off" (reports ignored)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.store = work / "store"
        self.store.mkdir(exist_ok=True)
        self.report = work / "report.jsonl"
        self.role = "off"
        self.count = self.target = self.signum = 0
        self.labels: list[str] = []
        self.job: dict[str, Any] = {}

    def run(self, job: dict[str, Any]) -> None:
        self.job = job
        if job["mode"] == "branch":
            self._run_branch()
        else:
            self._run_fresh()

    def event(self, label: str) -> None:
        if self.role in ("off", "victim"):
            return
        self.count += 1
        if self.role == "child":
            self.labels.append(label)
            if self.count == self.target:
                os.kill(os.getpid(), self.signum)  # handled here and now (or held, if deferred)
        else:
            self._branch(label)

    # -- one real run, a forked victim at every report ------------------------------------

    def _run_branch(self) -> None:
        job, root, case = self.job, Path(self.job["root"]), self._case(0)
        cwd, env = os.getcwd(), dict(os.environ)
        os.chdir(job["cwd"])
        _set_env(job["env"])
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        _output_to(case)
        self.role, self.count = "runner", 0
        code = _call(job["entry"], job["argv"])
        if self.role == "victim":
            _leave(code)
        self.role = "off"
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved, strict=True):
            os.dup2(old, fd)
            os.close(old)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        self._record(0, "no signal", 0, code, False, case, root)

    def _branch(self, label: str) -> None:
        index, signum = self.count, _alternate(self.count)
        self.role = "off"
        sys.stdout.flush()
        sys.stderr.flush()
        root, case = Path(self.job["root"]), self._case(index)
        saved = self._save(root)
        pid = os.fork()
        if pid == 0:
            self.role = "victim"
            _output_to(case)
            os.kill(os.getpid(), signum)  # raises here, or when the deferred section ends
            return
        code, hung = _reap(pid)
        self._record(index, label, signum, code, hung, case, root)
        self._restore(root, saved)
        self.role = "runner"

    # -- a fresh fork of the warm lab for every report number -----------------------------

    def _run_fresh(self) -> None:
        job, root = self.job, Path(self.job["root"])
        saved = self._save(root)
        labels = self._child(0, job.get("signal", 0), [])  # the dry run: counts the reports
        self._restore(root, saved)
        if job.get("external"):  # the one case: its signal comes from outside
            return
        for index in range(1, len(labels) + 1):
            self._child(index, _alternate(index), labels)
            self._restore(root, saved)

    def _child(self, index: int, signum: int, labels: list[str]) -> list[str]:
        job, case = self.job, self._case(index)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                os.chdir(job["cwd"])
                _set_env(job["env"])
                if "download" in job:
                    _patch_download(**job["download"])
                _output_to(case)
                self.role, self.count, self.target, self.signum = "child", 0, index, signum
                code = _call(job["entry"], job["argv"])
                self.role = "off"
                (case / "events.json").write_text(json.dumps(self.labels))
            finally:
                _leave(code)
        code, hung = _reap(pid)
        events = case / "events.json"
        found = json.loads(events.read_text()) if events.exists() else []
        label = job.get("external") or (labels[index - 1] if index else "no signal")
        self._record(index, label, signum, code, hung, case, Path(job["root"]))
        return found

    # -- bookkeeping -------------------------------------------------------------------------

    def _case(self, index: int) -> Path:
        case = self.work / "cases" / self.job["name"] / str(index)
        case.mkdir(parents=True, exist_ok=True)
        return case

    def _save(self, root: Path) -> Path:
        saved = self.work / "saved"
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(root, saved, symlinks=True)
        return saved

    @staticmethod
    def _restore(root: Path, saved: Path) -> None:
        """Put `root`'s content back as saved; `root` itself stays (it is the command's cwd)."""
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        shutil.copytree(saved, root, symlinks=True, dirs_exist_ok=True)

    def _record(
        self, index: int, label: str, signum: int, code: int, hung: bool, case: Path, root: Path
    ) -> None:
        line = {
            "job": self.job["name"],
            "index": index,
            "label": label,
            "signal": int(signum),
            "code": code,
            "hung": hung,
            "stdout": (case / "stdout").read_text(errors="replace"),
            "stderr": (case / "stderr").read_text(errors="replace"),
            "after": _digest(root, self.store),
        }
        with open(self.report, "a") as f:
            f.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class LabCase:
    """One case a lab reported."""

    job: str
    index: int
    label: str
    run: Run
    hung: bool
    after: Tree


class Lab:
    """A lab process working in the background (pytest side)."""

    def __init__(self, work: Path, preload: Sequence[str], hooks: Sequence[str]) -> None:
        self.work = work
        work.mkdir(parents=True)
        self.preload, self.hooks = list(preload), list(hooks)
        self.jobs: list[dict[str, Any]] = []
        self.before: dict[str, tuple[Scenario, Tree]] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._cases: list[LabCase] | None = None

    def root_for(self, name: str) -> Path:
        """Where the job `name` runs (a copy of its scenario's folder)."""
        return self.work / "runs" / name

    def add(self, scenario: Scenario, mode: str, **extra: Any) -> None:
        """Queue `scenario`: "fresh" (a fork of the warm lab per report) or "branch"."""
        root = self.root_for(scenario.name)
        shutil.copytree(scenario.root, root, symlinks=True)
        self.before[scenario.name] = (scenario, tree(root))
        self.jobs.append(
            {
                "name": scenario.name,
                "mode": mode,
                "entry": ENTRIES[scenario.args[0]],
                "argv": list(scenario.args),
                "cwd": str(root),
                "root": str(root),
                "env": dict(scenario.env),
                **extra,
            }
        )

    def start(self) -> None:
        spec = self.work / "spec.json"
        content = {"work": str(self.work), "preload": self.preload, "hooks": self.hooks}
        spec.write_text(json.dumps({**content, "jobs": self.jobs}))
        with open(self.work / "lab.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _LAB_MAIN, str(spec), str(FAULTS), str(FAULTS.parent)],
                cwd=self.work,
                env=_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def cases(self, job: str) -> tuple[Scenario, Tree, list[LabCase]]:
        """The scenario of `job`, its folder before, and every case the lab reported for it."""
        if self._cases is None:
            assert self.proc is not None
            code = self.proc.wait(timeout=LAB_TIMEOUT_S)
            log = (self.work / "lab.log").read_text(errors="replace")
            assert code == 0, f"the lab failed (exit {code}):\n{log[-6000:]}"
            lines = (self.work / "report.jsonl").read_text().splitlines()
            self._cases = [self._parse(json.loads(line)) for line in lines]
        scenario, before = self.before[job]
        return scenario, before, [c for c in self._cases if c.job == job]

    def _parse(self, raw: dict[str, Any]) -> LabCase:
        store = self.work / "store"
        after: Tree = {
            k: (store / v.removeprefix("sha256:")).read_bytes() if v.startswith("sha256:") else v
            for k, v in raw["after"].items()
        }
        where = f"report {raw['index']} ({raw['label']})"
        run = Run(where, raw["signal"], raw["code"], raw["stdout"], raw["stderr"])
        return LabCase(raw["job"], raw["index"], raw["label"], run, raw["hung"], after)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def judge_lab(job: str, lab: Lab, must_see: Sequence[str]) -> list[tuple[LabCase, Verdict]]:
    """Judge every case of a lab job strictly: the hooks fire only once the handlers are in
    place, so nothing is tolerated. Each label in `must_see` must end one of the reports.
    Returns the verdicts; their `line` problems are the caller's to assert."""
    scenario, before, cases = lab.cases(job)
    labels = {c.label for c in cases}
    missing = [m for m in must_see if not any(label.endswith(m) for label in labels)]
    assert not missing, f"{job}: these hooks never reported: {missing} (seen: {sorted(labels)})"
    judged, failures = [], []
    for case in cases:
        verdict = judge(case.run, before, case.after, scenario.sets)
        if case.hung:
            verdict.problems.append("hung")
        if verdict.accepted:
            verdict.problems.append(f"ended outside the promise ({verdict.accepted})")
        failures += [f"{case.run}: {p}" for p in verdict.problems]
        judged.append((case, verdict))
    print(f"\n{job}: {len(cases)} cases, exit codes {dict(Counter(c.run.code for c in cases))}")
    assert not failures, "\n".join(failures)
    return judged


# -- a slow mirror for downloads ------------------------------------------------------------

CHUNKS = 8  # each file is served in this many pieces ...
PAUSE_S = 0.03  # ... with this pause after each


class Mirror:
    """An http server on 127.0.0.1 serving gzip files slowly. A request for
    /<pid>/<file>/<k>/<signal>/<name> sends `signal` to `pid` once `k` chunks of <file> have gone
    out (0: right after the headers; CHUNKS: after the whole body)."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.files = dict(files)
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                _, pid, victim, k, signum, name = self.path.split("/")
                data = mirror.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                size = -(-len(data) // CHUNKS)
                with contextlib.suppress(OSError):  # the client stopped listening
                    for i in range(CHUNKS + 1):
                        if name == victim and i == int(k):
                            os.kill(int(pid), int(signum))
                        if i < CHUNKS:
                            self.wfile.write(data[i * size : (i + 1) * size])
                            self.wfile.flush()
                            time.sleep(PAUSE_S)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, victim: str, chunks: int, signum: int) -> str:
        """A mirror URL ({pid}: the downloading process fills it in)."""
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/{{pid}}/{victim}/{chunks}/{int(signum)}/"

    def md5(self) -> dict[str, str]:
        return {name: hashlib.md5(data).hexdigest() for name, data in self.files.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- fixtures --------------------------------------------------------------------------------

NPY_SWEEP = 30_000  # samples of the large --npy (94 MB, streamed)
NPY_LAB = 3_500  # four batches of 1024 (the last one short)
IMAGES_SWEEP = 120
IMAGES_LAB = 2
TRAIN_HOOKS = (
    "vae_train.training:load_mnist",
    "vae_train.training:_Run._train_epoch",
    "vae_train.adam:Adam.step",
    "vae_train.training:_Run._evaluate",
    "vae_train.training:checkpoint_bytes",
    "tempfile:mkdtemp",
    "pathlib:Path.write_bytes",
    "vae_runtime.fileio:Outputs.commit",
    "os:replace",
)
EXPORT_HOOKS = (
    "vae_export.onnx_export:load_checkpoint",
    "torch.onnx:export",
    "onnx.checker:check_model",
    "tempfile:mkdtemp",
    "pathlib:Path.write_bytes",
    "vae_export.onnx_export:verify_graphs",
    "vae_runtime.session:_Graph.load",
    "vae_runtime.fileio:Outputs.commit",
    "os:replace",
)
RUNTIME_HOOKS = (
    "vae_runtime.session:_Graph.load",
    "vae_runtime.tasks:load_inputs",
    "vae_runtime.npy:NpyWriter.write",
    "os:posix_fallocate",
    "vae_runtime.tasks:png_bytes",
    "vae_runtime.tasks:gif_bytes",
    "tempfile:mkdtemp",
    "pathlib:Path.write_bytes",
    "vae_runtime.fileio:Outputs.commit",
    "os:replace",
)


@pytest.fixture(scope="module")
def world(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> World:
    """The pristine scenario folders, and a second model.pt for vae-export to export."""
    from vae_train.model import VAEConfig
    from vae_train.training import TrainSettings, train

    root = tmp_path_factory.mktemp("signals")
    settings = TrainSettings(epochs=1, batch_size=64, seed=7, device="cpu")
    config = VAEConfig(hidden_dim=16, latent_dim=2)
    train(settings, config, out_dir=root / "second", data_dir=tiny.data)
    return World(tiny, root / "scenarios", root / "second" / "model.pt")


@pytest.fixture(scope="module")
def mirror(tiny: Tiny) -> Iterator[Mirror]:
    """The slow mirror, serving the tiny data's two image files."""
    served = Mirror({name: (tiny.data / name).read_bytes() for name in (TRAIN_GZ, TEST_GZ)})
    yield served
    served.close()


# The torch commands' time sweeps (their moments are explained at their tests). Each run pays
# the whole start-up, so they run in the background from the start, beside everything else.
SWEEP_EPOCHS = 6  # vae-train's epochs in its sweep: so that a moment lands between two of them
TRAIN_FORCE_MOMENTS = [Moment(d) for d in (0.0, 0.01, 0.05, 0.2, 0.6, 1.5, 3.0)]
TRAIN_FORCE_MOMENTS.append(Moment(0.0, line=1))
TRAIN_FRESH_MOMENTS = [Moment(d) for d in (0.03, 1.0, 2.5)]
EXPORT_MOMENTS = [Moment(d) for d in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 2.5)] + [Moment(0.1, line=1)]


@dataclass(frozen=True)
class Background:
    """What runs beside the tests from the module's start: the three labs, and the sweeps."""

    train: Lab
    export: Lab
    runtime: Lab
    sweeps: Mapping[str, Future[list[tuple[Run, Tree]]]]


@pytest.fixture(scope="module")
def background(
    world: World,
    mirror: Mirror,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Background]:
    """The labs and the torch commands' sweeps that the selected tests need, started at once,
    working in the background."""
    wanted = {getattr(item, "originalname", item.name) for item in request.session.items}
    work = tmp_path_factory.mktemp("labs")
    train = Lab(
        work / "train",
        ["torch", "vae_train.cli", "vae_train.training", "vae_runtime.images"],
        TRAIN_HOOKS,
    )
    for name, victim, chunks, signum in (
        ("download-first", TRAIN_GZ, 3, signal.SIGINT),
        ("download-second", TEST_GZ, 5, signal.SIGTERM),
    ):
        label = f"{victim} after {chunks} of {CHUNKS} chunks"
        download = {"mirror": mirror.url(victim, chunks, signum), "md5": mirror.md5()}
        scenario = world.train_download(name, train.root_for(name))
        train.add(scenario, "fresh", external=label, signal=int(signum), download=download)
    # Branch jobs compute with torch in the lab itself, so they come after every fresh fork.
    train.add(world.train(fresh=False, epochs=2), "branch")
    train.add(world.train(fresh=True, epochs=1), "branch")
    export = Lab(work / "export", ["vae_export.cli", "vae_export.onnx_export"], EXPORT_HOOKS)
    export.add(world.export(), "branch")
    runtime = Lab(work / "runtime", ["vae_runtime.cli", "vae_runtime.tasks"], RUNTIME_HOOKS)
    for scenario in (
        world.generate_npy(NPY_LAB),
        world.generate_images(IMAGES_LAB),
        world.interpolate(),
        world.reconstruct(),
    ):
        runtime.add(scenario, "fresh")
    for lab, users in (
        (train, {"test_hooks_train", "test_hooks_train_line_counts_the_epochs_kept"}),
        (train, {"test_download_through_vae_train"}),
        (export, {"test_hooks_export"}),
        (runtime, {"test_hooks_runtime"}),
    ):
        if users & wanted and lab.proc is None:
            lab.start()
    folder = tmp_path_factory.mktemp("sweeps")
    planned = {  # the longest first
        "export": ("test_time_sweep_export", EXPORT_MOMENTS, None),
        "train-force": ("test_time_sweep_train", TRAIN_FORCE_MOMENTS, False),
        "train-fresh": ("test_time_sweep_train", TRAIN_FRESH_MOMENTS, True),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(
                sweep,
                world.export() if fresh is None else world.train(fresh=fresh, epochs=SWEEP_EPOCHS),
                moments,
                folder,
                2,
            )
            for name, (user, moments, fresh) in planned.items()
            if user in wanted
        }
        yield Background(train, export, runtime, futures)
        for future in futures.values():
            future.cancel()
        for lab in (train, export, runtime):
            lab.stop()


# -- time sweeps ------------------------------------------------------------------------------


@pytest.mark.usefixtures("background")  # the background work starts here
@pytest.mark.parametrize("name", ["generate-npy", "generate-images", "interpolate", "reconstruct"])
def test_time_sweep_runtime(name: str, world: World, tmp_path: Path) -> None:
    """Torch-free commands: a signal at eight moments from the first millisecond to the exit
    (a 94 MB --npy being written, 120 files in --images-dir, a GIF and .npy, ...)."""
    scenario = {
        "generate-npy": lambda: world.generate_npy(NPY_SWEEP),
        "generate-images": lambda: world.generate_images(IMAGES_SWEEP),
        "interpolate": world.interpolate,
        "reconstruct": world.reconstruct,
    }[name]()
    ref, after, total = reference(scenario, tmp_path)
    delays = [0.0, 0.01, 0.04] + [total * f for f in (0.2, 0.4, 0.6, 0.8)]
    moments = [Moment(d) for d in delays] + [Moment(0.004, line=1)]  # after its summary line
    runs = sweep(scenario, moments, tmp_path)
    assert_sweep(scenario, [*runs, (ref, after)], world.checks)


def test_time_sweep_train(world: World, background: Background) -> None:
    """vae-train over an older run with --force (TRAIN_FORCE_MOMENTS: start-up before the
    handlers, importing torch, loading the data; just after an epoch was kept, which its line
    says; between epochs), and into a folder it has to make (TRAIN_FRESH_MOMENTS). The labs'
    runs without a signal are the controls."""
    for name in ("train-force", "train-fresh"):
        runs = background.sweeps[name].result(timeout=LAB_TIMEOUT_S)
        scenario = world.train(fresh=name.endswith("fresh"), epochs=SWEEP_EPOCHS)
        assert_sweep(scenario, runs, world.checks)


def test_time_sweep_export(world: World, background: Background) -> None:
    """vae-export over an older export with --force (EXPORT_MOMENTS): start-up, loading torch,
    the ONNX export, verification (after its "exported" line) and the commit."""
    runs = background.sweeps["export"].result(timeout=LAB_TIMEOUT_S)
    assert_sweep(world.export(), runs, world.checks)


# -- hooks: a signal at every report of the hooked calls --------------------------------------


@pytest.mark.parametrize(
    ("job", "must_see"),
    [
        (f"generate-npy-{NPY_LAB}", ["NpyWriter.write:before", "os:posix_fallocate:after"]),
        (f"generate-images-{IMAGES_LAB}", ["tasks:png_bytes:after", "os:replace:before"]),
        ("interpolate", ["tasks:gif_bytes:before", "Outputs.commit:after"]),
        ("reconstruct", ["tasks:load_inputs:after", "_Graph.load:before"]),
    ],
)
def test_hooks_runtime(job: str, must_see: list[str], background: Background) -> None:
    """Torch-free commands: a signal at every hooked call, before and after it (every .npy
    batch, the preallocation, each PNG and GIF encoded and written, each rename, ...)."""
    judged = judge_lab(job, background.runtime, must_see)
    assert not [f"{c.run}: {p}" for c, v in judged for p in v.line]
    assert len(judged) > 15


@pytest.mark.parametrize(("fresh", "epochs"), [(False, 2), (True, 1)], ids=["force", "fresh"])
def test_hooks_train(fresh: bool, epochs: int, background: Background) -> None:
    """vae-train: a signal around loading the data, every epoch, training step and evaluation,
    each checkpoint serialised, write, staging folder, commit and rename. All but the line's
    epoch count, which test_hooks_train_line_counts_the_epochs_kept checks."""
    must_see = [
        "vae_train.training:load_mnist:before",
        "vae_train.adam:Adam.step:after",
        "vae_train.training:_Run._evaluate:after",
        "vae_train.training:checkpoint_bytes:before",
        "os:replace:after",
    ]
    judged = judge_lab(
        f"train-{'fresh' if fresh else 'force'}-{epochs}", background.train, must_see
    )
    unchanged = [c for c, _ in judged if c.run.stderr.strip().endswith(NOTHING_KEPT)]
    assert unchanged, "no case stopped the run before its first epoch was kept"
    if epochs > 1:
        between = [c for c, _ in judged if "holds 1 finished epoch(s)" in c.run.stderr]
        assert between, "no case stopped the run after its first epoch was kept"


def test_hooks_train_line_counts_the_epochs_kept(background: Background) -> None:
    """The line says how many epochs model.pt holds, also when the signal came during a commit."""
    wrong = []
    for job in ("train-force-2", "train-fresh-1"):
        scenario, before, cases = background.train.cases(job)
        for case in cases:
            verdict = judge(case.run, before, case.after, scenario.sets)
            wrong += [f"{case.run}: {p}" for p in verdict.line]
    assert not wrong, "\n".join(wrong)


def test_hooks_export(background: Background) -> None:
    """vae-export: a signal around loading the checkpoint, each torch.onnx.export, the onnx
    checker, staging, each graph and manifest write, verification, every graph load, the
    commit and each rename: all three old files, or all three new ones."""
    must_see = [
        "torch.onnx:export:before",
        "torch.onnx:export:after",
        "onnx.checker:check_model:after",
        "vae_export.onnx_export:verify_graphs:before",
        "vae_export.onnx_export:verify_graphs:after",
        "vae_runtime.session:_Graph.load:before",
        "os:replace:before",
    ]
    judged = judge_lab("export", background.export, must_see)
    assert not [f"{c.run}: {p}" for c, v in judged for p in v.line]
    assert [c for c, _ in judged if "kept the complete" in c.run.stderr], "none after the commit"


# -- downloads --------------------------------------------------------------------------------


def test_download_through_vae_train(background: Background) -> None:
    """vae-train downloading MNIST (its mirrors pointed at the local one): a signal in the
    middle of the first file, and in the middle of the second (the first is kept)."""
    lines = []
    for job in ("download-first", "download-second"):
        scenario, before, cases = background.train.cases(job)
        (case,) = cases
        verdict = judge(case.run, before, case.after, scenario.sets)
        assert not verdict.problems + verdict.line and not verdict.accepted, (case.run, verdict)
        lines.append(case.run.stderr.strip())
    assert lines[0].endswith(NOTHING_KEPT), lines[0]
    assert lines[1].endswith(f"{TRAIN_GZ}; nothing else was changed"), lines[1]


_DOWNLOAD = """
import json, os, signal, sys
from pathlib import Path
from vae_runtime import signals
from vae_runtime.errors import Interrupted
signals.install()
try:
    from vae_train.data import load_mnist
    mirror = sys.argv[2].format(pid=os.getpid())
    load_mnist(cache_dir=Path(sys.argv[1]), mirrors=[mirror], checksums=json.loads(sys.argv[3]))
    print("complete")
except Interrupted as exc:
    print("interrupted", exc.signal_name)
    sys.exit(exc.exit_code)
finally:
    for signum in signals.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
"""


@pytest.mark.parametrize("cached", [False, True], ids=["empty-cache", "train-file-cached"])
def test_download_through_the_library(
    cached: bool, mirror: Mirror, tiny: Tiny, tmp_path: Path
) -> None:
    """vae_train.data.load_mnist downloading from a slow local mirror, a signal after 0 (only the
    headers), some or all chunks of either file: each file is absent or complete in the cache,
    nothing else is there, and a cache folder made for nothing is gone again."""
    cache = "cache/mnist-vae/mnist"
    served = {n: (tiny.data / n).read_bytes() for n in (TRAIN_GZ, TEST_GZ)}
    sets = [download_set(f"{cache}/{n}", served[n], n) for n in served]
    if cached:
        cases = [(TEST_GZ, k) for k in (0, 5)]
    else:
        cases = [(TRAIN_GZ, k) for k in (0, 4, CHUNKS)] + [(TEST_GZ, k) for k in (2, CHUNKS)]

    def one(index: int) -> tuple[Run, Tree, Tree]:
        victim, chunks = cases[index]
        signum = _alternate(index)
        root = tmp_path / str(index)
        root.mkdir()
        if cached:
            (root / cache).mkdir(parents=True)
            (root / cache / TRAIN_GZ).write_bytes(served[TRAIN_GZ])
        before = tree(root)
        args = [str(root / cache), mirror.url(victim, chunks, signum), json.dumps(mirror.md5())]
        done = subprocess.run(
            [sys.executable, "-c", _DOWNLOAD, *args],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        where = f"{victim} after {chunks} of {CHUNKS} chunks"
        return Run(where, signum, done.returncode, done.stdout, done.stderr), before, tree(root)

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(one, range(len(cases))))
    failures = []
    for (_, chunks), (run, before, after) in zip(cases, outcomes, strict=True):
        problems, new = judge_files(before, after, sets, run.code == 0)
        if run.code == EXIT[signal.Signals(run.signum)]:
            expected = f"interrupted {signal.Signals(run.signum).name}\n"
            if run.stdout != expected or run.stderr:
                problems.append(f"stdout {run.stdout!r}, stderr {run.stderr[-300:]!r}")
        elif run.code != 0 or run.stdout != "complete\n" or len(new) + cached != 2:
            problems.append(f"stdout {run.stdout!r}, stderr {run.stderr[-300:]!r}")
        elif 0 < chunks < CHUNKS:
            problems.append("a signal in the middle of a file did not stop the download")
        failures += [f"{run}: {p}" for p in problems]
    assert not failures, "\n".join(failures)


# -- start-up: imports and native extensions --------------------------------------------------

_TRIP = """
import _imp, itertools, json, operator, os, runpy, signal, sys, weakref
mode, target, signum, script = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
imports, installed = [], []

class Trip:
    # mode "import": the signal at the first import of `target`; "finalizer": the same, sent
    # from a finalizer (as if it came while one ran); "list": print the imports made before
    # the handlers are installed, and stop there
    @staticmethod
    def find_spec(name, path=None, module=None):
        imports.append(name)
        if mode == "import" and name == target:
            sys.meta_path.remove(Trip)
            os.kill(os.getpid(), signum)
        if mode == "finalizer" and name == target:
            sys.meta_path.remove(Trip)
            token = Trip()
            weakref.finalize(token, os.kill, os.getpid(), signum)
            del token  # the finalizer runs now, and the handler inside it
        return None

real_signal, real_create = signal.signal, _imp.create_dynamic

def spy(signalnum, handler):
    if not installed and sys._getframe(1).f_globals.get("__name__") == "vae_runtime.signals":
        installed.append(len(imports))
        if mode == "list":
            print(json.dumps(imports))
            sys.stdout.flush()
            os._exit(0)
    return real_signal(signalnum, handler)

def create_dynamic(spec, *args):
    # mode "pending": the signal is there as native extension `target` starts to initialise,
    # with no Python code in between (os.killpg, unlike os.kill, does not run the handlers);
    # mode "told": the test is told through fd SYNC_FD, and sends the signal a moment later
    if spec.name != target or mode not in ("pending", "told"):
        return real_create(spec, *args)
    _imp.create_dynamic = real_create
    if mode == "told":
        os.write(int(os.environ["SYNC_FD"]), b"now")
        return real_create(spec, *args)
    calls = [(os.killpg, os.getpgrp(), signum), (real_create, spec, *args)]
    return list(itertools.starmap(operator.call, calls))[1]

signal.signal = spy
_imp.create_dynamic = create_dynamic
sys.meta_path.insert(0, Trip)
sys.argv = [script, *sys.argv[5:]]
runpy.run_path(script, run_name="__main__")
"""


def _trip(
    scenario: Scenario, root: Path, mode: str, target: str = "", signum: int = 0, after: float = 0
) -> Run:
    """Run the console script in a copy of the scenario's folder under `_TRIP` (its own process
    group); with mode "told", send `signum` `after` seconds after the wrapper says so."""
    shutil.copytree(scenario.root, root, symlinks=True)
    rest = scenario.args[1:]
    argv = [sys.executable, "-c", _TRIP, mode, target, str(signum), command(scenario.args[0])]
    read, write = os.pipe()
    env = {"SYNC_FD": str(write)}
    proc = _launch(scenario, root, [*argv, *rest], env, pass_fds=(write,), start_new_session=True)
    os.close(write)
    with os.fdopen(read, "rb") as told:
        if mode == "told" and told.read(3):
            end = time.monotonic() + after
            while time.monotonic() < end:  # a busy wait: sleep() is too coarse under load
                pass
            proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return Run(f"{mode} {target}", signum, proc.returncode, out, err)


@pytest.mark.parametrize(
    "name",
    [
        "vae-train",
        "vae-export",
        "vae-generate",
        "vae-interpolate",
        "vae-reconstruct",
    ],
)
def test_handlers_come_before_any_third_party_import(
    name: str, world: World, tmp_path: Path
) -> None:
    """The handlers are installed before anything slow is imported (`_entry`'s promise), so a
    Ctrl-C during start-up is the one line: no third-party module is imported before them."""
    run = _trip(world.for_command(name), tmp_path / "root", "list")
    assert run.code == 0, run
    third_party = [
        m
        for m in json.loads(run.stdout)
        if m.partition(".")[0] not in sys.stdlib_module_names and not m.startswith("vae_")
    ]
    assert not third_party, f"{name} imports {third_party[:8]} before its signal handlers"


@pytest.mark.parametrize(
    ("name", "module", "signum"),
    [
        ("vae-train", "torch", signal.SIGINT),
        ("vae-export", "torch", signal.SIGTERM),
        ("vae-export", "onnx", signal.SIGINT),
        ("vae-export", "torch._dynamo.variables", signal.SIGINT),  # lazily, inside the export
        ("vae-generate", "typer", signal.SIGINT),
        ("vae-generate", "onnxruntime", signal.SIGTERM),
        ("vae-interpolate", "PIL", signal.SIGINT),
        ("vae-reconstruct", "onnxruntime", signal.SIGTERM),
    ],
)
def test_signal_at_the_first_import_of(
    name: str, module: str, signum: signal.Signals, world: World, tmp_path: Path
) -> None:
    """A signal at the first import of a package: one line, nothing changed."""
    scenario = world.for_command(name)
    run = _trip(scenario, tmp_path / "root", "import", module, signum)
    line = expect_interrupted(run.result(), EXIT[signum])
    assert line.endswith(NOTHING_KEPT), line
    assert tree(tmp_path / "root") == tree(scenario.root)


@pytest.mark.parametrize(
    ("name", "module", "mode"),
    [
        ("vae-train", "torch._C", "pending"),
        ("vae-export", "onnx.onnx_cpp2py_export", "pending"),
        ("vae-generate", "onnxruntime.capi.onnxruntime_pybind11_state", "told"),
    ],
)
def test_signal_while_a_native_extension_initialises(
    name: str, module: str, mode: str, world: World, tmp_path: Path
) -> None:
    """A signal as a native extension starts to initialise ("pending"), or while it does
    ("told": 6 to 25 ms in): one line, nothing changed."""
    scenario = world.for_command(name)
    moments = [(0.0, signal.SIGINT)]
    if mode == "told":
        moments = [(t, _alternate(i)) for i, t in enumerate((0.006, 0.01, 0.015, 0.025))]
    failures = []
    for index, (after, signum) in enumerate(moments):
        root = tmp_path / str(index)
        run = _trip(scenario, root, mode, module, signum, after)
        try:
            line = expect_interrupted(run.result(), EXIT[signum])
            assert line.endswith(NOTHING_KEPT), line
            assert tree(root) == tree(scenario.root)
        except AssertionError as exc:
            failures.append(f"{after * 1000:.0f} ms, {run}: {exc}")
    assert not failures, "\n".join(failures)


def test_signal_while_a_finalizer_runs(world: World, tmp_path: Path) -> None:
    """A signal whose handler runs inside a finalizer (here during vae-generate's import of
    onnxruntime, as with importlib's module-lock callbacks) still stops the command: one line,
    nothing changed."""
    scenario = world.generate_small()
    run = _trip(scenario, tmp_path / "root", "finalizer", "onnxruntime", signal.SIGINT)
    line = expect_interrupted(run.result(), EXIT[signal.SIGINT])
    assert line.endswith(NOTHING_KEPT), line
    assert tree(tmp_path / "root") == tree(scenario.root)


# -- the end ----------------------------------------------------------------------------------


def test_signal_while_a_finished_command_exits(world: World, tmp_path: Path) -> None:
    """A signal just after vae-generate printed its summary (its outputs committed): the command
    says what it kept (130/143) or ends 0; it is never killed without a line."""
    scenario = world.generate_small()
    before = tree(scenario.root)
    ends, failures = [], []
    for index, delay in enumerate((0.003, 0.008, 0.015, 0.006)):
        signum = _alternate(index)
        root = tmp_path / str(index)
        shutil.copytree(scenario.root, root, symlinks=True)
        proc = _launch(scenario, root)
        assert proc.stdout is not None
        summary = proc.stdout.readline()
        time.sleep(delay)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        run = Run(f"{delay} s after {summary.strip()!r}", signum, proc.returncode, out, err)
        problems, new = judge_files(before, tree(root), scenario.sets, True)
        failures += [f"{run}: {p}" for p in problems + ([] if new else ["no output"])]
        ends.append(run)
    assert not failures, "\n".join(failures)  # the outputs are complete either way
    killed = [str(r) for r in ends if r.code < 0]
    assert not killed, "killed without a line:\n" + "\n".join(killed)
