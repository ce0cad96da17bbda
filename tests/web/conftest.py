"""The vae-web suite's fixtures, defined in web_support.py."""

from web_support import artefacts, browser, open_page, sites, web_graphs

__all__ = ["artefacts", "browser", "open_page", "sites", "web_graphs"]
