"""`vae-export` (also `python -m vae_export`): signal handlers first, then a one-line hint if the
training extra is missing, then the command (vae_export.cli)."""

from __future__ import annotations

from vae_runtime.entrypoints import run

INSTALL_HINT = "install the training extra: pip install torch==2.13.0 'mnist-vae[train]'"


def main() -> None:
    """Console entry point of `vae-export`."""
    run(
        "vae-export",
        "vae_export.cli:app",
        ("torch", "onnx", "onnxscript"),
        INSTALL_HINT,
        fast_exit=True,
    )


if __name__ == "__main__":
    main()
