"""What every mnist-vae command shares: one-line errors, one table of exit codes, plain help.

Commands are declared with `@app.command(cls=VaeCommand)` on an app from `make_app`; their bodies
call one library function. `VaeCommand.main` is the one place where what went wrong becomes a
line on stderr and an exit code (docs/guarantees.md, "Exit codes"):
  - 0 done;
  - 1 a failure: a VaeError about a file, graph, data or disk, an OSError nothing foresaw;
  - 2 a bad value or usage: typer's usage errors, InvalidArgumentError, OutputRefusedError;
  - 3 (vae-score, where asked) images scored under the threshold: BelowThreshold, outputs kept;
  - 130 / 143 interrupted by SIGINT / SIGTERM (128 + the signal), saying what was kept.
`VAE_DEBUG=1` prints the traceback behind the line, for bug reports.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand

from . import fileio, signals
from .errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    BelowThreshold,
    Interrupted,
    VaeError,
    interruption,
)

DEBUG_ENV = "VAE_DEBUG"


def make_app(help_text: str) -> typer.Typer:
    """A Typer app with the project's settings: plain help with defaults, no completion flags."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


def debugging() -> bool:
    """True when VAE_DEBUG asks for tracebacks and third-party warnings."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes a library put in a message


def _line(prog: str, message: str) -> str:
    return f"{prog}: error: {' '.join(_ESCAPES.sub('', str(message)).split())}"


def _kept() -> str:
    """What an interrupted command leaves: the files it completed, everything else untouched."""
    if not fileio.journal:
        return "no file was changed"
    return f"kept the complete {', '.join(map(str, fileio.journal))}; nothing else was changed"


class VaeCommand(TyperCommand):
    """A TyperCommand whose every failure is one line on stderr and an exit code from the table.

    It parses and invokes the command itself (what click's `main` does), so that nothing of
    click's own error printing or its mapping of Ctrl-C to a bare exit code gets in between."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        prog = prog_name or self.name or "mnist-vae"
        argv = list(sys.argv[1:] if args is None else args)
        fileio.journal.clear()
        code, line = 0, ""
        error: BaseException | None = None
        try:
            try:
                with self.make_context(prog, argv, **extra) as ctx:
                    self.invoke(ctx)
            except Exception as exc:  # a Ctrl-C a library wrapped in its own error is a Ctrl-C
                raise interruption(exc) or exc from None
            signals.ignore_from_now()  # done: a late signal changes nothing
        except typer.Exit as exc:  # --help, or a command that exits on purpose
            code = exc.exit_code
        except typer.TyperException as exc:  # click's usage errors: bad option, bad value
            code, error = getattr(exc, "exit_code", EXIT_USAGE), exc
            line = _line(prog, f"{exc.format_message()} (see {prog} --help)")
        except KeyboardInterrupt as exc:  # Interrupted, or Ctrl-C where no handler was installed
            stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
            stop.detail = stop.detail or _kept()
            code, line, error = stop.exit_code, f"{prog}: {stop}", exc
        except BelowThreshold as exc:  # an outcome the user asked to hear of, not an error
            code, line = exc.exit_code, f"{prog}: {' '.join(str(exc).split())}"
        except VaeError as exc:
            code, line, error = exc.exit_code, _line(prog, str(exc)), exc
        except MemoryError as exc:
            code, error = EXIT_FAILURE, exc
            line = _line(prog, "out of memory; ask for fewer or smaller images")
        except OSError as exc:  # what no check can foresee: a vanished folder, a broken pipe
            where = f"{exc.filename}: " if exc.filename else ""
            code, line, error = EXIT_FAILURE, _line(prog, f"{where}{exc.strerror or exc}"), exc
        except Exception as exc:  # a bug: still one line, with the way to report it
            code, error = EXIT_FAILURE, exc
            line = _line(
                prog,
                f"internal error ({type(exc).__name__}: {exc}); please report it with the "
                f"output of the same command run with {DEBUG_ENV}=1",
            )
        signals.ignore_from_now()
        if line:
            if debugging() and error is not None:
                traceback.print_exception(error)
            print(line, file=sys.stderr)
        sys.exit(code)
