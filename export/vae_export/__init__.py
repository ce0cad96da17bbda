"""mnist-vae's exporter: model.pt -> encoder.onnx + decoder.onnx + manifest.json, verified."""

from __future__ import annotations

import importlib
from typing import Any

# The opset range is declared here, not in onnx_export, because `vae-export --help` and the
# missing-torch hint must work without importing torch (onnx_export imports it).
DEFAULT_OPSET = 18  # the dynamo exporter's native minimum; onnxruntime >= 1.14 runs it
MIN_OPSET = 17  # below this the exporter's version converter is untested here

# Imported on first use (PEP 562): `vae_export.cli` imports this package before it can check
# that torch is installed, so nothing here may import torch eagerly.
_LAZY = {
    "ExportError": ".onnx_export",
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


def __getattr__(name: str) -> Any:
    """Import the public names of onnx_export and verify on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
