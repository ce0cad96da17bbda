"""Console entry points. A signal during start-up is one line and exit 130/143 like at any
other moment: this module's first statements record SIGINT and SIGTERM (before anything else is
imported), `run` installs the real handlers and delivers what was recorded.

Only the standard library and `signals` are imported here; `vae_train`, `vae_export`,
`vae_serve` and `vae_web` start their commands through `run` too (from their `__main__`), naming
their app by import path.
"""

import signal
import sys

_early: list[int] = []  # signals that came before `run` installed the handlers


def _remember(signum: int, frame: object) -> None:  # pragma: no cover  (console script only)
    _early.append(signum)


def _spawned_child() -> bool:
    """True while multiprocessing prepares a spawned child: it re-imports the console script
    (as `__mp_main__`), and so this module, in a process that is not the command. uvicorn's
    `--workers` are such children, stopped by SIGTERM from their supervisor; a recorder here
    would swallow one that came during their start-up, and the worker would serve on while its
    supervisor waited for it forever."""
    process = sys.modules.get("multiprocessing.process")
    return process is not None and getattr(process.current_process(), "_inheriting", False)


if not _spawned_child():
    for _signum in (signal.SIGINT, signal.SIGTERM):  # first of all: nothing is imported yet
        signal.signal(_signum, _remember)

import contextlib
import importlib
import importlib.util
import os
import warnings
from collections.abc import Sequence
from typing import NoReturn

from . import signals
from .errors import EXIT_FAILURE, Interrupted

REINSTALL = "reinstall mnist-vae: pip install --force-reinstall mnist-vae"


def _import_quietly(name: str) -> None:  # pragma: no cover  (console script only)
    """Import `name` with file descriptor 2 pointed at /dev/null. onnxruntime's import writes a
    coloured telemetry warning straight to it when ~/.cache is not writable ("Failed to persist
    telemetry device ID"); no Python or onnxruntime setting turns that one off (1.32)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Run only in the console scripts' own processes: tests/faults/test_faults_signals.py and
# tests/runtime/test_runtime_torch_free.py exercise them there, where coverage is not measured.
def run(  # pragma: no cover  (console script only)
    prog: str,
    app: str,
    requires: Sequence[str] = (),
    hint: str = "",
    quiet_imports: Sequence[str] = ("onnxruntime",),
    fast_exit: bool = False,
) -> None:
    """Start command `prog`: signal handlers, then a one-line `hint` if a module in `requires`
    is not installed, then the `quiet_imports` (see `_import_quietly`), then import `app`
    ("package.module:attribute") and run it. With `fast_exit`, the process ends as soon as
    the command has ended (see `_exit_now`)."""
    signals.install()
    started = False
    try:
        if _early:  # the process was asked to stop before it had done anything
            raise Interrupted(_early[0])
        for name in requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                print(f"{prog}: error: {name} is not installed; {hint}", file=sys.stderr)
                sys.exit(EXIT_FAILURE)
        module, _, attribute = app.partition(":")
        # Signals wait for the imports: a native extension interrupted while it initialises
        # fails in odd ways (an ImportError, a crash), and nothing is written meanwhile anyway.
        with signals.deferred():
            from .console import debugging

            if not debugging():
                # Third-party warnings (numpy on extreme values, exporters' deprecations) are
                # not the user's concern, and they would break the one-line promise.
                warnings.simplefilter("ignore")
                for name in quiet_imports:
                    try:
                        _import_quietly(name)
                    except ImportError as exc:
                        print(
                            f"{prog}: error: {name} cannot be imported ({exc}); "
                            f"{hint or REINSTALL}",
                            file=sys.stderr,
                        )
                        sys.exit(EXIT_FAILURE)
            command = getattr(importlib.import_module(module), attribute)
        started = True
        command(prog_name=prog)  # VaeCommand.main: every outcome below is handled there
    except Interrupted as exc:  # before the command started: nothing was written
        signals.ignore_until_exit()
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit as exc:  # the command's outcome, its line already printed
        signals.ignore_until_exit()
        if fast_exit and started:  # (a missing extra exits normally: nothing to tear down)
            _exit_now(exc.code)
        raise


def _exit_now(code: object) -> NoReturn:  # pragma: no cover  (console script only)
    """End the process with `code` (SystemExit's meaning) without the interpreter's teardown.
    After `import torch`, tearing the interpreter down (freeing every module's objects, torch's
    static destructors, OpenMP's threads) took ~0.45 s on the development VM, a tenth of a
    5-epoch vae-train run, with nothing left to do: the command's files are committed (written,
    fsynced, renamed) and its lines printed before it returns. Only the commands that need no
    atexit work use it (vae-train, vae-eval, vae-export: no Ray, no servers, no temporary
    files left to the interpreter)."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): what the interpreter would print, and 1
        print(code, file=sys.stderr)
        status = EXIT_FAILURE
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing can reach it
            stream.flush()
    os._exit(status)


def vae_generate() -> None:  # pragma: no cover  (console scripts)
    """`vae-generate`."""
    run("vae-generate", "vae_runtime.cli:generate_app")


def vae_interpolate() -> None:  # pragma: no cover  (console scripts)
    """`vae-interpolate`."""
    run("vae-interpolate", "vae_runtime.cli:interpolate_app")


def vae_reconstruct() -> None:  # pragma: no cover  (console scripts)
    """`vae-reconstruct`."""
    run("vae-reconstruct", "vae_runtime.cli:reconstruct_app")


RAY_HINT = "install the ray extra: pip install 'mnist-vae[ray]'"


def vae_score() -> None:  # pragma: no cover  (console scripts)
    """`vae-score`; with --ray among its arguments, the Ray Data pipeline of vae_serve (named
    here as a string, as every console script names its app: the runtime never imports it)."""
    if "--ray" in sys.argv[1:]:
        run("vae-score", "vae_serve.ray_score:app", requires=("ray",), hint=RAY_HINT)
    else:
        run("vae-score", "vae_runtime.cli:score_app")
