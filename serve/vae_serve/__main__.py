"""`vae-serve` (also `python -m vae_serve`): signal handlers first, then a one-line hint if the
serve extra is missing, then the command (vae_serve.cli)."""

from __future__ import annotations

from vae_runtime.entrypoints import run

INSTALL_HINT = "install the serve extra: pip install 'mnist-vae[serve]'"
REQUIRES = ("starlette", "uvicorn", "orjson", "prometheus_client")


def main() -> None:
    """Console entry point of `vae-serve`."""
    run("vae-serve", "vae_serve.cli:app", REQUIRES, INSTALL_HINT)


if __name__ == "__main__":
    main()
