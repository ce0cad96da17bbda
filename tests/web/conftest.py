"""The vae-web suite's fixtures, defined in web_support.py."""

from web_support import (
    _ort_dir,
    artefacts,
    browser,
    open_page,
    ort_files,
    real_export,
    real_ort,
    sites,
    web_graphs,
)

__all__ = [
    "_ort_dir",
    "artefacts",
    "browser",
    "open_page",
    "ort_files",
    "real_export",
    "real_ort",
    "sites",
    "web_graphs",
]
