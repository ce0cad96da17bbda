"""`vae-train` (also `python -m vae_train`) and `vae-eval`: signal handlers first, then a one-line
hint if torch is missing, then the command (vae_train.cli)."""

from __future__ import annotations

from vae_runtime.entrypoints import run

# Here, not in cli.py: this module must import nothing slow before `run` installs the handlers.
INSTALL_HINT = "install the training extra: pip install torch==2.13.0 'mnist-vae[train]'"


def main() -> None:
    """Console entry point of `vae-train`."""
    run(
        "vae-train", "vae_train.cli:app", ("torch",), INSTALL_HINT, quiet_imports=(), fast_exit=True
    )


def eval_main() -> None:
    """Console entry point of `vae-eval`."""
    run(
        "vae-eval",
        "vae_train.cli:eval_app",
        ("torch",),
        INSTALL_HINT,
        quiet_imports=(),
        fast_exit=True,
    )


if __name__ == "__main__":
    main()
