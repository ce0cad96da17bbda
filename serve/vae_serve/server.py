"""The process host: bind the port, run the app under uvicorn (one process or `--workers`) on
its fastest HTTP stack at hand, stop on SIGTERM or Ctrl-C after answering the requests in flight."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vae_runtime import signals
from vae_runtime.errors import InvalidArgumentError, VaeError, check_int

from .app import CONFIG_ENV, ServeConfig, create_app, worker_app
from .models import Models, load_models

if TYPE_CHECKING:
    from .grpc_server import GrpcFront


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
    grpc_port: int | None = None  # gRPC beside HTTP (grpc_server.py), in this one process

    def check(self) -> Listen:
        check_int("port", self.port, 0, 65535)
        check_int("workers", self.workers, 1, 64)
        if self.grpc_port is not None:
            check_int("grpc port", self.grpc_port, 0, 65535)
            if self.workers != 1:
                raise InvalidArgumentError(
                    "--grpc-port serves from one process: leave --workers at 1 (each uvicorn "
                    "worker would need a gRPC port of its own)"
                )
        check_int("drain seconds", self.drain_seconds, 0, 3600)
        if self.log_level not in _LOG_LEVELS:
            raise InvalidArgumentError(
                f"log level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        return self


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
STACK_ENV = "VAE_SERVE_HTTP"  # "h11": the pure-Python stack even where httptools/uvloop exist
_STACKS = ("auto", "h11")


@dataclass(frozen=True)
class HttpStack:
    """uvicorn's HTTP parser and event loop, by uvicorn's names (Config(http=..., loop=...))."""

    http: str
    loop: str

    def describe(self) -> str:
        return f"HTTP stack: {self.http} parser, {self.loop} event loop"


def http_stack(environ: Mapping[str, str] = os.environ) -> HttpStack:
    """httptools and uvloop (the [serve] extra installs them where they have wheels) when they
    import, else h11 and asyncio; VAE_SERVE_HTTP=h11 asks for the latter (for comparisons)."""
    choice = environ.get(STACK_ENV, "auto").strip().lower() or "auto"
    if choice not in _STACKS:
        raise InvalidArgumentError(
            f"{STACK_ENV} must be one of {', '.join(_STACKS)}, got {environ[STACK_ENV]!r:.40}"
        )
    http, loop = "h11", "asyncio"
    if choice == "auto":
        try:
            import httptools  # noqa: F401

            http = "httptools"
        except ImportError:
            pass
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            pass
    return HttpStack(http, loop)


def serve(config: ServeConfig, listen: Listen, announce: Callable[[str], None]) -> str:
    """Load the graphs (a bad one is refused before the port is bound), bind, serve until
    SIGTERM or SIGINT, drain the requests in flight, and return what happened. `announce` gets
    the line naming the models and the URL once the port is bound."""
    config.check()
    listen.check()
    stack = http_stack()
    models = load_models(config)
    sock = _listen(listen.host, listen.port)
    url = base_url(*sock.getsockname()[:2])
    front, grpc = None, ""
    if listen.grpc_port is not None:
        from .grpc_server import bind  # grpcio is imported only when asked for

        front = bind(listen.host, listen.grpc_port, max_message_bytes=config.max_body_bytes)
        grpc = f"; gRPC at {base_url(listen.host, front.port).removeprefix('http://')}"
    announce(
        f"serving {', '.join(models.models)} at {url} (V2: /v2/models/<name>/infer; "
        f"/samples.png; /metrics){grpc}"
    )
    return _run_uvicorn(config, listen, models, sock, stack, front)  # pragma: no cover


# Runs in vae-serve's own process only (tests/serve/test_serve.py starts it, signals it and
# checks its exit code and output; coverage is measured in-process).
def _run_uvicorn(  # pragma: no cover
    config: ServeConfig,
    listen: Listen,
    models: Models,
    sock: socket.socket,
    stack: HttpStack,
    front: GrpcFront | None = None,
) -> str:
    import logging

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

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)  # the lifespan has loaded the models
            if front is not None and not self.should_exit:
                from .grpc_server import app_state

                front.start(app_state(self.config.app))

        def handle_exit(self, sig: int, frame: Any) -> None:
            if front is not None:  # gRPC refuses new calls now, drains beside HTTP
                front.refuse_new()
            super().handle_exit(sig, frame)

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
        "http": stack.http,
        "loop": stack.loop,
    }
    if listen.workers == 1:
        uv = uvicorn.Config(create_app(config, models), **common)
        logging.getLogger("uvicorn.error").info(stack.describe())  # Config set up the logging
        try:
            Server(uv).run(sockets=[sock])
        finally:
            if front is not None:  # the calls in flight finish on the State they read
                front.stop(listen.drain_seconds).wait()
    else:  # each worker loads the graphs itself, from the config it finds in the environment
        os.environ[CONFIG_ENV] = config.to_json()
        app = f"{worker_app.__module__}:{worker_app.__name__}"
        uv = uvicorn.Config(app, factory=True, workers=listen.workers, **common)
        logging.getLogger("uvicorn.error").info(stack.describe())
        supervisor = Supervisor(uv, sockets=[sock])
        supervisor.signal_queue.extend(stops)  # came before it listened for them
        supervisor.run()
    signals.ignore_from_now()
    how = f" by {signal.Signals(stops[0]).name}" if stops else ""
    return f"stopped{how}; the requests in flight were answered"
