"""vae-serve: the exported graphs as an Open Inference Protocol service (KServe V2 / Triton).

    from vae_serve import ServeConfig, create_app
    app = create_app(ServeConfig(onnx_dir="out"))   # any ASGI host runs it (uvicorn, Ray Serve)

Homes, in the order a request crosses them: `codec` (the wire format, no web framework),
`endpoints` (the HTTP paths), `models` (graphs as served models), `app` (settings, metrics, the
app factory), `server` (the uvicorn process), `ray_serve` (the Ray Serve deployment), `cli`.
"""

from __future__ import annotations

from .app import ServeConfig, create_app
from .models import Models, load_models

__all__ = ["Models", "ServeConfig", "create_app", "load_models"]
