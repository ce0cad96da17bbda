"""mnist-vae's exporter: model.pt -> encoder.onnx + decoder.onnx + manifest.json, verified.

The names below load lazily (PEP 562): `vae-export --help` and the missing-torch hint must not
import torch (1.1 s), and only onnx_export, graphs and verify need it.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

# The opset range is declared here, not in onnx_export, because `vae-export --help` shows it.
DEFAULT_OPSET = 18  # the dynamo exporter's native minimum; onnxruntime >= 1.14 runs it
MIN_OPSET = 17  # below this the exporter's version converter is untested here

_EXPORTS = {
    "ExportError": ".graphs",
    "ExportResult": ".onnx_export",
    "export_checkpoint": ".onnx_export",
    "Report": ".verify",
    "VerificationError": ".verify",
    "verify_graphs": ".verify",
}

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ExportError",
    "ExportResult",
    "Report",
    "VerificationError",
    "export_checkpoint",
    "verify_graphs",
]

if TYPE_CHECKING:
    from .graphs import ExportError
    from .onnx_export import ExportResult, export_checkpoint
    from .verify import Report, VerificationError, verify_graphs


def __getattr__(name: str) -> object:
    """Import the public names of onnx_export, graphs and verify on first access."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
