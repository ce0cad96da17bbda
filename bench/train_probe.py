"""One `vae-train` process with a clock on each of its parts (train_speed.py --sections parts).

    VAE_PROBE_T0=$(python -c 'import time; print(time.time())') \
        python bench/train_probe.py --data-dir /path/to/mnist --epochs 5 -q -f -o /tmp/out

Imports what vae-train imports (with its thread settings set first, as its command does), then
runs vae-train's own console entry point in this process, its arguments as given, with a timer
around the parts that `training` runs: reading the IDX files, each epoch's training pass and
test evaluation, each epoch's set of files, and the process's end (`os._exit`, where vae-train
ends). Prints one JSON line on stdout: the seconds since VAE_PROBE_T0 (the wall clock just
before the parent started this process, so the interpreter's own start-up counts) at each mark.
Takes vae-train's default threads; its other options pass through.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

T0 = float(os.environ.get("VAE_PROBE_T0", time.time()))
marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    marks.append((name, time.time() - T0))


def timed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` with a mark `name:start` before and `name:end` after it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        mark(f"{name}:start")
        try:
            return fn(*args, **kwargs)
        finally:
            mark(f"{name}:end")

    return wrapper


def main() -> None:
    mark("python")
    from vae_train.cli import tune_threads

    tune_threads(True)  # what vae-train's command does first, before torch loads (its default)
    from vae_train import training

    mark("imports")  # typer, the CLI, torch and the training code: what vae-train imports
    training.load_mnist = timed(training.load_mnist, "data")
    for method, name in (("_train_epoch", "epoch"), ("_evaluate", "eval"), ("_commit", "files")):
        setattr(training._Run, method, timed(getattr(training._Run, method), name))
    real_exit = os._exit

    def exit_now(code: int) -> None:  # vae-train ends here, its files committed
        mark("exit")
        sys.stdout.write(json.dumps({"code": code, "marks": marks}) + "\n")
        sys.stdout.flush()
        real_exit(code)

    os._exit = exit_now  # type: ignore[assignment]
    sys.argv = ["vae-train", *sys.argv[1:]]
    from vae_train.__main__ import main as vae_train

    vae_train()


if __name__ == "__main__":
    main()
