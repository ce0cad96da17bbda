"""The process host: bind the port, run the app under uvicorn (one process or `--workers`),
stop on SIGTERM or Ctrl-C after answering the requests in flight."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from vae_runtime import signals
from vae_runtime.errors import InvalidArgumentError, VaeError, check_int

from .app import CONFIG_ENV, ServeConfig, create_app, worker_app
from .models import Models, load_models


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, UnicodeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise InvalidArgumentError(f"--host {host!r} is not an address ({detail})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        fix = "stop what uses it or choose another --port"
        if exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose another --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "give an address of this machine as --host"
        raise VaeError(f"cannot listen on {host}:{port}: {exc.strerror}; {fix}") from None
    sock.set_inheritable(True)  # uvicorn's worker processes serve from the same socket
    return sock


def base_url(host: str, port: int) -> str:
    """http://host:port, an IPv6 address in brackets."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class Listen:
    """How `vae-serve` runs the app: address, uvicorn workers, logging, the drain limit."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    access_log: bool = False
    drain_seconds: int = 30

    def check(self) -> Listen:
        check_int("port", self.port, 0, 65535)
        check_int("workers", self.workers, 1, 64)
        check_int("drain seconds", self.drain_seconds, 0, 3600)
        if self.log_level not in _LOG_LEVELS:
            raise InvalidArgumentError(
                f"log level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        return self


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(config: ServeConfig, listen: Listen, announce: Callable[[str], None]) -> str:
    """Load the graphs (a bad one is refused before the port is bound), bind, serve until
    SIGTERM or SIGINT, drain the requests in flight, and return what happened. `announce` gets
    the line naming the models and the URL once the port is bound."""
    config.check()
    listen.check()
    models = load_models(config)
    sock = _listen(listen.host, listen.port)
    url = base_url(*sock.getsockname()[:2])
    announce(
        f"serving {', '.join(models.models)} at {url} (V2: /v2/models/<name>/infer; "
        "/samples.png; /metrics)"
    )
    return _run_uvicorn(config, listen, models, sock)  # pragma: no cover  (see _run_uvicorn)


# Runs in vae-serve's own process only (tests/serve/test_serve.py starts it, signals it and
# checks its exit code and output; coverage is measured in-process).
def _run_uvicorn(  # pragma: no cover
    config: ServeConfig, listen: Listen, models: Models, sock: socket.socket
) -> str:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # The console script's handlers would turn SIGTERM into an exit 143 mid-request. uvicorn
    # installs its own (graceful: stop accepting, finish what is in flight, run the lifespan's
    # shutdown) and, once done, re-raises the signal to the handler it found: this recorder.
    stops: list[int] = []
    for signum in signals.SIGNALS:
        signal.signal(signum, lambda signum, frame: stops.append(signum))

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                for signum in stops:  # came before uvicorn listened for them
                    self.handle_exit(signum, None)
                yield

    class Supervisor(Multiprocess):  # its handlers queue signals and never re-raise them
        def handle_signals(self) -> None:
            stops.extend(s for s in self.signal_queue if s in signals.SIGNALS)
            super().handle_signals()

    common: dict[str, Any] = {
        "log_level": listen.log_level,
        "access_log": listen.access_log,
        "timeout_graceful_shutdown": listen.drain_seconds,
        "lifespan": "on",
        "server_header": False,
    }
    if listen.workers == 1:
        Server(uvicorn.Config(create_app(config, models), **common)).run(sockets=[sock])
    else:  # each worker loads the graphs itself, from the config it finds in the environment
        os.environ[CONFIG_ENV] = config.to_json()
        app = f"{worker_app.__module__}:{worker_app.__name__}"
        uv = uvicorn.Config(app, factory=True, workers=listen.workers, **common)
        supervisor = Supervisor(uv, sockets=[sock])
        supervisor.signal_queue.extend(stops)  # came before it listened for them
        supervisor.run()
    signals.ignore_from_now()
    how = f" by {signal.Signals(stops[0]).name}" if stops else ""
    return f"stopped{how}; the requests in flight were answered"
