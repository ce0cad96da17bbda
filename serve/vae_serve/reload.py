"""Live model updates (`--model-control poll|explicit`): load a new export off the request path,
verify it (`load_models`: SHA-256 against the manifest, the contract), and swap it in with one
reference assignment on the app's `State`, so that a request finishes on the models it started
with. A bad export is refused (the log, `vae_serve_model_reloads_total{outcome="refused"}`) and
the old models keep serving.

`poll` looks at the folder's manifest.json every `poll_seconds` (inode, size, mtime): a new one
(vae-export writes the graphs first, the manifest last) is loaded once; a refused one is retried
when the manifest changes again. `explicit` answers Triton's repository extension: `load` re-reads
the folder (the model asked for, beside those served), `unload` stops serving one model. Each
uvicorn worker process holds its own models and polls on its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_runtime.contract import MANIFEST_FILE
from vae_runtime.errors import VaeError

from .codec import VERSION, NotFoundError, RequestError
from .models import Models, load_models

if TYPE_CHECKING:
    from .app import State

log = logging.getLogger("uvicorn.error")  # where vae-serve's server log goes
_Identity = tuple[int, int, int] | None


def _identity(path: Path) -> _Identity:
    """(inode, size, mtime) of a file, None when there is none: a new export changes it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ModelControl:
    """The loads, swaps and polling of one app's models (one load at a time)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.config = state.config
        self.manifest = Path(self.config.onnx_dir or ".") / MANIFEST_FILE
        self.known: list[str] = list(state.models.models)  # every name served so far
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: _Identity = None  # the manifest last acted on (None: look at it first)
        self._thread: threading.Thread | None = None

    def start_polling(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="vae-serve-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # pragma: no cover  (a bug must not end the polling)
                log.exception("model poll failed")

    def swap(self, models: Models) -> None:
        """Serve `models` from now on: one reference assignment (requests in flight keep theirs)."""
        self.state.metrics.serving(models)
        self.state.models = models
        self.known += [name for name in models.models if name not in self.known]

    def poll_once(self) -> str | None:
        """Look at the manifest once: "loaded", "refused", or None (nothing new)."""
        seen = _identity(self.manifest)
        if seen == self._seen:
            return None
        sha = _sha256(self.manifest)
        if seen is None or sha is None:  # being replaced, or gone: keep serving what we have
            return None
        if sha == self.state.models.export.get("export_sha256"):
            self._seen = seen
            return None
        with self._lock:
            try:
                models = load_models(self.config)
            except VaeError as exc:
                if _identity(self.manifest) != seen:
                    return None  # changed while loading: look again at the next poll
                self._seen = seen
                self.state.metrics.reloads.labels("refused").inc()
                log.warning("model update refused, still serving the old export: %s", exc)
                return "refused"
            if _identity(self.manifest) != seen:
                return None  # the graphs may be of two exports: load the newer at the next poll
            self._seen = seen
            self.swap(models)
        self.state.metrics.reloads.labels("loaded").inc()
        log.info("model update: now serving export %s", models.export.get("export_sha256"))
        return "loaded"

    def load(self, name: str) -> None:
        """Triton's load: re-read the folder and serve `name` beside the models served now."""
        with self._lock:
            try:
                models = load_models(self.config)
            except VaeError as exc:
                self.state.metrics.reloads.labels("refused").inc()
                log.warning("load of %s refused, still serving the old models: %s", name, exc)
                raise RequestError(f"failed to load {name!r}: {exc}") from None
            if name not in models.models:
                raise RequestError(
                    f"failed to load {name!r}: the folder has {', '.join(models.models)}"
                )
            served = set(self.state.models.models) | {name}
            kept = {n: m for n, m in models.models.items() if n in served}
            self.swap(replace(models, models=kept))
        self.state.metrics.reloads.labels("loaded").inc()
        log.info("loaded %s (export %s)", name, models.export.get("export_sha256"))

    def unload(self, name: str) -> None:
        """Triton's unload: stop serving `name` (requests in flight finish)."""
        with self._lock:
            current = self.state.models
            if name not in self.known:
                raise NotFoundError(
                    f"unknown model {name!r}; this server has {', '.join(self.known)}"
                )
            kept = {n: m for n, m in current.models.items() if n != name}
            self.swap(replace(current, models=kept))
        log.info("unloaded %s", name)

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model known, READY or UNAVAILABLE."""
        served = self.state.models.models
        return [
            {"name": n, "version": VERSION, "state": "READY"}
            if n in served
            else {"name": n, "version": VERSION, "state": "UNAVAILABLE", "reason": "unloaded"}
            for n in self.known
        ]


def start_control(state: State) -> ModelControl | None:
    """The control of `state`'s models under --model-control poll|explicit (None: none)."""
    mode = state.config.model_control
    if mode == "none":
        return None
    control = ModelControl(state)
    if mode == "poll":
        control.start_polling()
    return control
