"""What every mnist-vae command shares: one-line errors and exit codes, plain (non-rich) help.

Commands are declared with `@app.command(cls=VaeCommand)` on an app from `make_app`; their bodies
call one library function and raise nothing themselves. `VaeCommand.main` turns
  - a usage error (bad option value, unknown option) into `prog: error: ...`, exit 2;
  - any VaeError from the library into `prog: error: ...`, exit 1;
  - Ctrl-C into `prog: interrupted`, exit 130;
  - an OSError nothing checked for (a full disk) into `prog: error: <file>: <reason>`, exit 1;
so that no user mistake ever prints a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer import _click
from typer.core import TyperCommand
from typer.exceptions import Abort

from .errors import VaeError


def make_app(help_text: str) -> typer.Typer:
    """A Typer app with the project's settings: plain help with defaults, no completion flags."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


def fail(prog: str, message: str, code: int) -> None:
    """Print `prog: error: message` on one line of stderr and exit with `code`."""
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    sys.exit(code)


class VaeCommand(TyperCommand):
    """A TyperCommand whose every failure is one line on stderr and a non-zero exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        prog = prog_name or _click.utils._detect_program_name()
        try:
            rv = super().main(args, prog, complete_var, standalone_mode=False, **extra)
        except _click.exceptions.ClickException as exc:
            if not standalone_mode:
                raise
            fail(prog, f"{exc.format_message()} (see {prog} --help)", exc.exit_code)
        except Abort:
            if not standalone_mode:
                raise
            print(f"{prog}: interrupted", file=sys.stderr)
            sys.exit(130)
        except VaeError as exc:
            if not standalone_mode:
                raise
            fail(prog, str(exc), 1)
        except MemoryError:
            fail(prog, "out of memory; use a smaller batch or grid", 1)
        except OSError as exc:  # what no check can foresee: a full disk, a vanished folder
            where = f"{exc.filename}: " if exc.filename else ""
            fail(prog, f"{where}{exc.strerror or exc}", 1)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv
