"""`vae-train` (also `python -m vae_train`): signal handlers first, then a one-line hint if torch
is missing, then the command (vae_train.cli)."""

from __future__ import annotations

from vae_runtime._entry import run

from .cli import INSTALL_HINT


def main() -> None:
    """Console entry point of `vae-train`."""
    run("vae-train", "vae_train.cli:app", ("torch",), INSTALL_HINT, quiet_imports=())


if __name__ == "__main__":
    main()
