"""vae-web: a static site that runs the exported graphs in the browser (onnxruntime-web).

from vae_web import build_site
print(build_site("out", "site"))   # the export folder in, the site's folder out
"""

from __future__ import annotations

from .build import build_site, find_ort

__all__ = ["build_site", "find_ort"]
