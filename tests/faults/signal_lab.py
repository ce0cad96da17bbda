"""The machinery that signals commands: time sweeps of the real console scripts, the lab, and a
slow mirror.

- time sweeps: the real console script, started with stdout and stderr piped, gets the signal
  after a delay, or a moment after one of the run's own output lines.
- the lab (`_lab_main`, a process of its own) patches the functions that matter so that each
  call reports itself just before and just after it happens, then calls the real entry point.
  Report N signals the process itself, for every N the command reaches. Torch-free commands are
  forked afresh from a warm lab for every N; training and export run once, and at every report
  the lab forks the command where it stands, signals the copy (which only unwinds), then puts
  the folder back as it was at the fork.
- the mirror: a server on 127.0.0.1 that trickles the gzip files and signals the downloading
  process after a chosen number of chunks."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    ENTRIES,
    Tree,
    call_entry,
    command,
    command_env,
    leave,
    loaded_tree,
    output_to,
    reap,
    stored_tree,
)
from helpers import tree
from signal_scenarios import _FRAME, Checks, Run, Scenario, Verdict, _alternate, judge

FAULTS = Path(__file__).parent
LAB_TIMEOUT_S = 900.0  # for a lab's whole work: far above what it takes, for loaded machines
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
        env=command_env({**scenario.env, **env}),
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
    "import sys; sys.path[:0] = sys.argv[2:]; import signal_lab as lab; lab._lab_main(sys.argv[1])"
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
        output_to(case)
        self.role, self.count = "runner", 0
        code = call_entry(job["entry"], job["argv"])
        if self.role == "victim":
            leave(code)
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
            output_to(case)
            os.kill(os.getpid(), signum)  # raises here, or when the deferred section ends
            return
        code, hung = reap(pid)
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
                output_to(case)
                self.role, self.count, self.target, self.signum = "child", 0, index, signum
                code = call_entry(job["entry"], job["argv"])
                self.role = "off"
                (case / "events.json").write_text(json.dumps(self.labels))
            finally:
                leave(code)
        code, hung = reap(pid)
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
            "after": stored_tree(root, self.store),
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
                env=command_env(),
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
        after = loaded_tree(raw["after"], store)
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
