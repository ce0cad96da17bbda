"""The exception hierarchy, with each error's exit code, and the argument checks that raise them.

Every failure a user can cause is a VaeError with a one-line message; the command-line layer
prints it and exits with the class's `exit_code` (docs/guarantees.md's table): 1 for a failure
(file, graph, data, disk), 2 for a bad value or usage, 3 for `BelowThreshold` (vae-score's
outcome where asked for, not a failure). `Interrupted` is Ctrl-C or SIGTERM: 128 + the signal.
"""

from __future__ import annotations

import math
import numbers
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:  # numpy is not imported at start-up (the console entry points import this)
    import numpy as np

EXIT_FAILURE = 1  # a file, graph, data set or disk let the command down
EXIT_USAGE = 2  # a bad value or a bad combination of options
EXIT_BELOW_THRESHOLD = 3  # vae-score --below-threshold-exit: an image scored under the threshold


class VaeError(Exception):
    """Base of every error the toolkit raises on purpose; the CLIs print its message as one line."""

    exit_code = EXIT_FAILURE


class DataError(VaeError):
    """Input data (an IDX file, an image, a data folder) is missing or malformed."""


class ModelFileError(VaeError):
    """An .onnx file, a manifest or a checkpoint is missing, corrupt or not what was expected."""


class OutputError(VaeError, OSError):
    """An output cannot be written: a missing or read-only folder, a full disk, an I/O error."""


class OutputRefusedError(OutputError):
    """An output path the command will not write: it exists (and no --force), it is one of the
    command's inputs or another of its outputs, or it is not a regular file. Nothing was done."""

    exit_code = EXIT_USAGE


class BusyError(OutputError):
    """Another mnist-vae process is writing into the same output folder."""


class InvalidArgumentError(VaeError, ValueError):
    """A parameter is outside its allowed range; the message names it, its value and the range."""

    exit_code = EXIT_USAGE


class NumericalError(VaeError):
    """A computation produced non-finite values (a NaN loss, a graph emitting NaN)."""


class BelowThreshold(VaeError):
    """Not a failure: the command did its work (its outputs are written), and images scored
    under the threshold where the user asked for a distinct exit code for that (a pipeline's
    anomaly gate). The command line prints the message without "error:"."""

    exit_code = EXIT_BELOW_THRESHOLD

    def __init__(self, message: str, exit_code: int = EXIT_BELOW_THRESHOLD) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised by the handlers `vae_runtime.signals` installs.

    `detail` says what was kept, when the code that was interrupted knows better than "nothing
    changed" (training: which epoch model.pt holds)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum, detail)
        self.signum = signum
        self.detail = detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}; {self.detail or 'no file was changed'}"


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Interrupted) in `exc`'s chain of causes, if any: libraries that
    catch everything (torch's exporter) wrap a Ctrl-C in an error of their own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def is_int(value: Any) -> TypeGuard[int]:
    """True for a plain int, never a bool: the rule for integers read from JSON or a file."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high], else InvalidArgumentError naming `name` and the range.
    Booleans and floats are refused (1.0 as a count is a mistake, not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        allowed = f">= {low:,}" if high is None else f"in {low:,}..{high:,}"
        raise InvalidArgumentError(f"{name} must be {allowed}, got {number:,}")
    return number


def check_float(name: str, value: Any, low: float, high: float) -> float:
    """`value` as a finite float in [low, high], else InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if not (math.isfinite(number) and low <= number <= high):
        raise InvalidArgumentError(
            f"{name} must be a finite number in {low:g}..{high:g}, got {number}"
        )
    return number


def check_path(name: str, value: Any) -> Path:
    """`value` as a Path (a str or an os.PathLike), else InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, str | os.PathLike):
        raise InvalidArgumentError(f"{name} must be a file path, got {type(value).__name__}")
    return Path(value)


def as_array(name: str, value: Any) -> np.ndarray:
    """`value` as a numpy array, or InvalidArgumentError for what numpy cannot make one of
    (ragged nested lists, objects that refuse)."""
    import numpy as np

    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidArgumentError(f"{name} must be an array ({exc})") from None
    if array.dtype == object:
        raise InvalidArgumentError(f"{name} must be a numeric array, got objects")
    return array
