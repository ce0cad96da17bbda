"""`vae-web` (also `python -m vae_web`): signal handlers first, then the command (vae_web.cli)."""

from __future__ import annotations

from vae_runtime.entrypoints import run


def main() -> None:
    """Console entry point of `vae-web`."""
    run("vae-web", "vae_web.cli:app")


if __name__ == "__main__":
    main()
