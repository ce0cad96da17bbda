"""SIGINT and SIGTERM as an exception that unwinds cleanly, and sections that hold them off.

The commands call `install()` before anything else; from then on either signal raises
`Interrupted` in the main thread at the next bytecode, so `with` blocks unwind and remove their
temporary files. A second signal while the first unwinds is ignored: the clean-up it would cut
short is what keeps the user's files intact.

Code that must not be cut in half (renaming a set of files into place, removing temporary
files, importing a native extension) runs inside `deferred()`: a signal arriving there is held,
and delivered, to whatever handler was in place, when the section ends. This works for library
users too (no `install()` needed): Ctrl-C then raises KeyboardInterrupt after the section
instead of in the middle of it.

Python runs a handler between any two bytecodes, also inside a finalizer or a weakref callback,
where an exception cannot propagate ("Exception ignored in ..."): `install()` therefore also
hooks `sys.unraisablehook`, and an Interrupted lost that way is delivered again a millisecond
later, in ordinary code.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_unwinding = False  # an Interrupted is on its way up: later signals are ignored
_lost: list[int] = []  # signals whose Interrupted was swallowed as "unraisable"


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    global _unwinding
    if _unwinding:
        return
    _unwinding = True
    raise Interrupted(signum)


def _redeliver(signum: int, frame: FrameType | None) -> None:
    if _lost:
        signal.raise_signal(_lost.pop())  # through the handler in place now (held if deferred)


def _catch_lost(hook: Any) -> Any:
    def unraisable(info: Any) -> None:
        global _unwinding
        if not isinstance(info.exc_value, Interrupted):
            hook(info)
            return
        _unwinding = False
        _lost.append(info.exc_value.signum)
        signal.signal(signal.SIGALRM, _redeliver)
        signal.setitimer(signal.ITIMER_REAL, 0.001)

    return unraisable


def install() -> None:
    """Make SIGINT and SIGTERM raise `Interrupted` (exit code 130 and 143 at the CLI)."""
    global _unwinding
    _unwinding = False
    for signum in SIGNALS:
        signal.signal(signum, _raise_interrupted)
    if getattr(sys.unraisablehook, "__name__", "") != "unraisable":
        sys.unraisablehook = _catch_lost(sys.unraisablehook)


def ignore_from_now() -> None:
    """The command's outcome is settled (done, or its error line is being printed): a signal
    from now on changes nothing and is ignored."""
    global _unwinding
    _unwinding = True


def ignore_until_exit() -> None:  # pragma: no cover  (a console script's last moments)
    """The process is about to exit with its outcome settled: from now on SIGINT and SIGTERM are
    ignored outright (CPython puts its default handlers back while it shuts down, and a signal
    in those last milliseconds would kill the process without its line)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first one that came."""
    if not _in_main_thread():  # signal handlers run in the main thread only; nothing to hold
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {signum: signal.signal(signum, hold) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler set outside Python, which only the default can stand for
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])  # runs the restored handler, here, at once
