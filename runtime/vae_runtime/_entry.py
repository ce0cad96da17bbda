"""Console entry points. They install the signal handlers before anything slow is imported, so a
Ctrl-C or SIGTERM during start-up is one line and exit 130/143 like any other moment.

Only the standard library and `signals` are imported here; `vae_train` and `vae_export` start
their commands through `run` too (from their `__main__`), naming their app by import path.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Sequence

from . import signals
from .errors import EXIT_FAILURE, Interrupted


def run(prog: str, app: str, requires: Sequence[str] = (), hint: str = "") -> None:
    """Start command `prog`: signal handlers, then a one-line `hint` if a module in `requires`
    is not installed, then import `app` ("package.module:attribute") and run it."""
    signals.install()
    try:
        for name in requires:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                print(f"{prog}: error: {name} is not installed; {hint}", file=sys.stderr)
                sys.exit(EXIT_FAILURE)
        module, _, attribute = app.partition(":")
        from ._cli import debugging

        if not debugging():
            # Third-party warnings (numpy on extreme values, exporters' deprecations) are not
            # the user's concern, and they would break the one-line promise.
            warnings.simplefilter("ignore")
        command = getattr(importlib.import_module(module), attribute)
        command(prog_name=prog)  # VaeCommand.main: every outcome below is handled there
    except Interrupted as exc:  # before the command started: nothing was written
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def vae_generate() -> None:
    """`vae-generate`."""
    run("vae-generate", "vae_runtime.cli:generate_app")


def vae_interpolate() -> None:
    """`vae-interpolate`."""
    run("vae-interpolate", "vae_runtime.cli:interpolate_app")


def vae_reconstruct() -> None:
    """`vae-reconstruct`."""
    run("vae-reconstruct", "vae_runtime.cli:reconstruct_app")
