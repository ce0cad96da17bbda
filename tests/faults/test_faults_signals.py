"""Signals at any moment of any command.

SIGINT or SIGTERM, whenever it comes, ends a command with exit 130 / 143 and one line saying what
was kept (no colour codes: stderr is a pipe here); no temporary file stays behind, nothing that
existed before is lost, and files written as a set change together or not at all. The signals
come four ways (see signal_lab.py), each at many moments: time sweeps, hooks, imports (a signal
at the first import of a package, and as a native extension initialises), and downloads.

Every run is judged by `signal_scenarios.judge`. The time sweeps tolerate only the inherent
window before any Python code of the toolkit runs, with the folder intact; they print what they
tolerated (`pytest -s`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Tiny, Tree, command, command_env
from helpers import expect_interrupted, tree
from signal_lab import (
    CHUNKS,
    LAB_TIMEOUT_S,
    Lab,
    Mirror,
    Moment,
    _launch,
    assert_sweep,
    judge_lab,
    reference,
    sweep,
)
from signal_scenarios import (
    EXIT,
    NOTHING_KEPT,
    TEST_GZ,
    TRAIN_GZ,
    Run,
    Scenario,
    World,
    _alternate,
    download_set,
    judge,
    judge_files,
)

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
            env=command_env(),
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
    """The handlers are installed before anything slow is imported (the promise of
    `vae_runtime.entrypoints`), so a Ctrl-C during start-up is the one line: no third-party
    module is imported before them."""
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


_SPAWNING_SCRIPT = """
import multiprocessing
import signal
import sys

from vae_runtime import entrypoints  # what every console script imports first


def child(queue):
    queue.put(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")  # as uvicorn starts --workers
    queue = context.Queue()
    worker = context.Process(target=child, args=(queue,))
    worker.start()
    print(queue.get(timeout=60), signal.getsignal(signal.SIGTERM).__name__)
    worker.join()
"""


def test_a_spawned_worker_is_stopped_by_sigterm_from_its_start(tmp_path: Path) -> None:
    """A worker process spawned by a command (uvicorn's --workers) re-imports the console script;
    the command's early recorder of signals must not be installed there, or a SIGTERM from the
    supervisor during the worker's start-up is recorded, never acted on, and the supervisor
    waits for the worker forever (seen once in make test: vae-serve --workers 2 hung)."""
    script = tmp_path / "spawning.py"
    script.write_text(_SPAWNING_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "_remember"]  # the child: default; the command: not
