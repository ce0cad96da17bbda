"""The fault suite's one process harness: console scripts started as processes, entry points
called inside forked children, the fork server that imports torch once, privilege drops, and
folder snapshots that cross a process boundary."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pkgutil
import resource
import selectors
import signal
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's console scripts: vae-train, vae-export, ...
TINY_TRAIN = ["--hidden-dim", "16", "--latent-dim", "2", "--batch-size", "64", "--device", "cpu"]
NOBODY = 65534
ENTRIES = {  # console script -> its entry point (pyproject's [project.scripts])
    "vae-train": "vae_train.__main__:main",
    "vae-export": "vae_export.__main__:main",
    "vae-generate": "vae_runtime.entrypoints:vae_generate",
    "vae-interpolate": "vae_runtime.entrypoints:vae_interpolate",
    "vae-reconstruct": "vae_runtime.entrypoints:vae_reconstruct",
}
Tree = dict[str, bytes | str]  # helpers.tree's form: path -> bytes, or the entry's kind


@dataclass(frozen=True)
class Tiny:
    """A tiny MNIST folder, a model.pt trained on it, and its export (graphs + manifest)."""

    data: Path
    model: Path
    encoder: Path
    decoder: Path
    manifest: Path


# -- console scripts in processes of their own -------------------------------------------------


def command(name: str) -> str:
    """The path of a console script of this install."""
    return str(BIN / name)


def command_env(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment of every command: no debug tracebacks, no real data folder, unbuffered
    stdout (so output lines carry their moment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAE_DEBUG", "VAE_DATA_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(
    args: Sequence[object],
    cwd: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (args[0] a console script name such as "vae-generate") to its end."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("VAE_DEBUG", None)
    return subprocess.run(
        [command(str(args[0])), *map(str, args[1:])],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def python_running(module: str, function: str, *args: str) -> list[str]:
    """A command line that runs `function` of the suite's module `module` (a file of this
    folder) in a fresh interpreter, with `args` in its sys.argv[1:]."""
    paths = [str(HERE), str(HERE.parent)]
    code = f"import sys; sys.path[:0] = {paths!r}; import {module} as m; m.{function}()"
    return [sys.executable, "-c", code, *args]


# -- inside a process: entry points, forked copies, file descriptors ----------------------------


def call_entry(entry: str, argv: Sequence[str]) -> int:
    """Run a console script's entry point ("module:function") with `argv`; its exit code.
    A traceback (never a command's way out) is printed and gives 99."""
    import vae_runtime.entrypoints as entrypoints

    def no_fast_exit(code: object) -> None:
        # vae-train, vae-eval and vae-export end with os._exit (entrypoints._exit_now); here the
        # lab still has to record what the command did, and then `leave`s the fork itself.
        raise SystemExit(code)

    entrypoints._exit_now = no_fast_exit  # type: ignore[assignment]
    module, _, name = entry.partition(":")
    main = getattr(importlib.import_module(module), name)
    sys.argv = list(argv)
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        return 99
    return 0


def output_to(case: Path) -> None:
    """Point file descriptors 1 and 2 at case/stdout and case/stderr."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(case / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)


def leave(code: int) -> None:
    """End a forked copy at once: its output flushed, nothing of its parent's run at exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def reap(pid: int, limit: float = 120.0) -> tuple[int, bool]:
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


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_tree(root: Path, store: Path) -> dict[str, str]:
    """`helpers.tree(root)` in a form that crosses a process boundary as JSON: each file's
    bytes kept once in `store` under their SHA-256, named "sha256:<digest>"."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            data = path.read_bytes()
            blob = store / sha256(data)
            if not blob.exists():
                with open(blob, "wb") as f:
                    f.write(data)
            found[key] = f"sha256:{blob.name}"
        else:
            found[key] = "folder" if path.is_dir() else "special"
    return found


def loaded_tree(stored: Mapping[str, str], store: Path) -> Tree:
    """The `helpers.tree` that `stored_tree` wrote down."""
    return {
        k: (store / v.removeprefix("sha256:")).read_bytes() if v.startswith("sha256:") else v
        for k, v in stored.items()
    }


# -- another user: uid 65534 --------------------------------------------------------------------

# Everything a command may import after a child switched to uid 65534. That user may not be able
# to read the interpreter, the venv or the checkout (root's home, a `mktemp -d` clone: 0700), so
# nothing may be left to import lazily: typer imports its vendored click piecemeal, numpy.random
# and torch._dynamo come on first use, vae-export asks find_spec whether onnxscript is there
# (find_spec answers from sys.modules without touching the disk), and PIL loads its image
# plugins when an image is first opened or saved.
_EAGER = ("numpy.random", "torch", "torch._dynamo", "onnx", "onnxscript", "onnxruntime")
_EVERY_SUBMODULE = ("typer", "vae_runtime", "vae_train", "vae_export")
# torch loads these lazily while it reads a checkpoint or exports a graph; where one of their
# submodules cannot import here (an optional dependency), the command would not need it either.
_TORCH_LAZY = ("torch.utils.serialization", "torch.onnx", "torch.export", "onnxscript")


def import_everything_a_command_needs() -> None:
    """Import, in this process, every module a command could import later."""
    for name in _EAGER:
        importlib.import_module(name)
    for name in _EVERY_SUBMODULE:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not info.name.endswith(("__main__", "_winconsole")):  # a CLI, Windows only
                importlib.import_module(info.name)
    for name in _TORCH_LAZY:
        package = importlib.import_module(name)
        paths = getattr(package, "__path__", [])
        for info in pkgutil.walk_packages(paths, f"{name}.", onerror=lambda _: None):
            parts = info.name.split(".")
            if parts[-1] == "__main__" or any(p.startswith("test") for p in parts):
                continue
            try:
                importlib.import_module(info.name)
            except (Exception, SystemExit):  # optional parts: no command needs them either
                continue
    for entry in ENTRIES.values():
        importlib.import_module(entry.partition(":")[0])
    from PIL import Image

    Image.init()  # every plugin, not only the few `import PIL.Image` brings


def become(uid: int) -> None:
    """Switch this process to `uid` (and the same gid), with no supplementary groups."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def skip_unless_nobody_works() -> None:
    """Skip where this process cannot start a process as uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("switching to uid 65534 needs root; the EFBIG sweep covers the write path")
    try:
        subprocess.run(["true"], preexec_fn=lambda: become(NOBODY), check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot switch to uid 65534 here ({exc}); EFBIG covers the write path")


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
    from vae_export import onnx_export
    from vae_runtime import fileio

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
        become(int(request["user"]))
    code = call_entry(ENTRIES[request["command"]], [request["command"], *request["args"]])
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


def serve() -> None:
    """The fork server's main loop: one JSON request a line on stdin, one forked child each, one
    JSON reply a line on stdout. Torch, onnx and every command are imported once, up front (all
    a child may need: see `import_everything_a_command_needs`); no torch op runs here, so each
    child starts with fresh thread pools."""
    import_everything_a_command_needs()
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


class Server:
    """A started fork server (`serve`); `run` is `harness.run` for a forked child."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("VAE_DEBUG", "VAE_DATA_DIR")}
        self.process = subprocess.Popen(
            python_running("harness", "serve"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self._reply(180)) == {"ready": True}

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
