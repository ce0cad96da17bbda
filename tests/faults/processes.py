"""What the fault tests share: real commands in real processes (`helpers.tree` sees every file
a command left behind)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's console scripts: vae-train, vae-export, ...
TINY_TRAIN = ["--hidden-dim", "16", "--latent-dim", "2", "--batch-size", "64", "--device", "cpu"]


@dataclass(frozen=True)
class Tiny:
    """A tiny MNIST folder, a model.pt trained on it, and its export (graphs + manifest)."""

    data: Path
    model: Path
    encoder: Path
    decoder: Path
    manifest: Path


def command(name: str) -> str:
    """The path of a console script of this install."""
    return str(BIN / name)


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
