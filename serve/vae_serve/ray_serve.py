"""`vae-serve --ray`: the same Starlette app (`app.create_app`) as a Ray Serve deployment.

Each replica holds its own `Decoder`/`Encoder`. The graphs travel with the deployment: the driver
reads the export's files once (after loading them itself, so that a bad graph is refused before
Ray starts) and binds their bytes (~1.3 MB for the seed model) into the application; every
replica, on whatever node it lands, writes them to a private temporary folder, loads them through
`load_models` (the runtime's contract checks and the manifest's SHA-256 check, before the replica
reports ready), and deletes the folder. No node needs a path of the driver's machine.

Ray is imported only here and only when used: `vae-serve` without `--ray` never imports it.
`app_builder` is the import path of Serve config files (`serve run` / `serve deploy`), which
`write_serve_config` writes with the deployment's options under Ray Serve's own names.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from vae_runtime import signals
from vae_runtime.contract import MANIFEST_FILE, listed_graphs
from vae_runtime.errors import Interrupted, InvalidArgumentError, VaeError, check_float, check_int
from vae_runtime.fileio import write_file

from .app import ServeConfig, create_app
from .grpc_server import METHODS, SERVICER_FUNCTION, Servicer, answer, app_state
from .models import Models, export_manifest, load_models
from .server import base_url

APP_NAME = "mnist-vae"  # the Serve application and its one deployment
IMPORT_PATH = f"{__name__}:app_builder"
INSTALL_HINT = "install the ray extra: pip install 'mnist-vae[ray]'"
REPLICA_ACTOR_PREFIX = "SERVE_REPLICA"  # Ray Serve's names of replica actors
# Each response of a replica names it: Ray Serve's replica id, the end of its actor's name.
REPLICA_HEADER = "x-vae-replica"


def ray_modules() -> tuple[Any, Any]:
    """(ray, ray.serve), or one line saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise VaeError(f"Ray Serve is not installed ({exc}); {INSTALL_HINT}") from None
    return ray, serve


@dataclass(frozen=True)
class Replicas:
    """The deployment's scaling, with Ray Serve's option names and defaults: a fixed
    `num_replicas` (default 1), or autoscaling between `min_replicas` and `max_replicas` towards
    `target_ongoing_requests` per replica; `max_ongoing_requests` per replica; `num_cpus`
    reserved by each replica."""

    num_replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    max_ongoing_requests: int = 5
    num_cpus: float = 1.0

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    def check(self) -> Replicas:
        """Raise InvalidArgumentError for a bad value or combination; return self."""
        if self.autoscaling and self.num_replicas is not None:
            raise InvalidArgumentError(
                "give either --num-replicas or --min-replicas/--max-replicas (autoscaling)"
            )
        if self.target_ongoing_requests is not None and not self.autoscaling:
            raise InvalidArgumentError("--target-ongoing-requests goes with --max-replicas")
        if self.num_replicas is not None:
            check_int("num replicas", self.num_replicas, 1, 10_000)
        low = check_int("min replicas", 1 if self.min_replicas is None else self.min_replicas, 0)
        high = self.max_replicas if self.max_replicas is not None else max(low, 1)
        check_int("max replicas", high, max(low, 1), 10_000)
        if self.target_ongoing_requests is not None:
            check_float("target ongoing requests", self.target_ongoing_requests, 0.01, 1e6)
        check_int("max ongoing requests", self.max_ongoing_requests, 1, 1_000_000)
        check_float("num cpus", self.num_cpus, 0.0, 1024.0)
        return self

    def options(self) -> dict[str, Any]:
        """The options of `serve.deployment`, as a config file's `deployments` entry holds them."""
        self.check()
        options: dict[str, Any] = {}
        if self.autoscaling:
            low = 1 if self.min_replicas is None else self.min_replicas
            scaling: dict[str, Any] = {"min_replicas": low}
            scaling["max_replicas"] = self.max_replicas or max(low, 1)
            if self.target_ongoing_requests is not None:
                scaling["target_ongoing_requests"] = self.target_ongoing_requests
            options["autoscaling_config"] = scaling
        else:
            options["num_replicas"] = self.num_replicas or 1
        options["max_ongoing_requests"] = self.max_ongoing_requests
        options["ray_actor_options"] = {"num_cpus": self.num_cpus}
        return options


@dataclass(frozen=True)
class Bundle:
    """The graphs a config names, as bytes that travel with the deployment: `files` maps a path
    relative to the replica's folder to its content (the graphs and the manifest beside them);
    `config` is the service's config with its paths relative to that folder; `models` the
    names it serves."""

    config: ServeConfig
    files: tuple[tuple[str, bytes], ...]
    models: tuple[str, ...]

    @classmethod
    def read(cls, config: ServeConfig) -> Bundle:
        """Load the graphs `config` names as the service would (ModelFileError for a bad one:
        refused here, before anything is deployed), then read their files."""
        served = tuple(load_models(config).models)
        files: dict[str, Path] = {}
        if config.onnx_dir is not None:
            listed = listed_graphs(export_manifest(config.onnx_dir).files)
            names = [MANIFEST_FILE, *(file for _, _, file in listed)]
            files = {n: config.onnx_dir / n for n in names}
            relative = dataclasses.replace(config, onnx_dir=Path("."))
        else:
            paths: dict[str, Path | None] = {"decoder": config.decoder, "encoder": config.encoder}
            for role, path in paths.items():
                if path is not None:  # each graph in its own folder, with its manifest if any
                    files[f"{role}/{path.name}"] = path
                    if (path.parent / MANIFEST_FILE).is_file():
                        files[f"{role}/{MANIFEST_FILE}"] = path.parent / MANIFEST_FILE
            relative = dataclasses.replace(
                config,
                decoder=Path("decoder", config.decoder.name) if config.decoder else None,
                encoder=Path("encoder", config.encoder.name) if config.encoder else None,
            )
        contents = tuple((name, path.read_bytes()) for name, path in files.items())
        return cls(relative, contents, served)

    def unpack(self, folder: Path) -> ServeConfig:
        """Write the files under `folder`; the config with its paths there."""
        for name, data in self.files:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        config = self.config
        return dataclasses.replace(
            config,
            onnx_dir=None if config.onnx_dir is None else folder / config.onnx_dir,
            decoder=None if config.decoder is None else folder / config.decoder,
            encoder=None if config.encoder is None else folder / config.encoder,
        )

    def load(self) -> tuple[ServeConfig, Models]:
        """The graphs loaded and checked (manifest SHA-256 included) from a private temporary
        folder, deleted again once the sessions hold them."""
        folder = Path(tempfile.mkdtemp(prefix="mnist-vae-replica-"))
        try:
            config = self.unpack(folder)
            return config, load_models(config)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def app(self) -> Starlette:
        """What each replica serves: `create_app` over the graphs of this bundle."""
        return create_app(*self.load())


def application(bundle: Bundle, replicas: Replicas, name: str = APP_NAME) -> Any:
    """The Ray Serve application: one deployment, `name`, whose replicas each build the app
    of `bundle` (loading and checking the graphs) before they report ready."""
    _, serve = ray_modules()
    options = replicas.options()

    class Replica:  # pragma: no cover  (runs in each replica: tests/cluster/test_ray.py)
        """The app over HTTP, and the gRPC service's calls as methods of the same names (Ray
        Serve's gRPC proxy calls them) over the same State."""

        def __serve_build_asgi_app__(self) -> Starlette:
            app = bundle.app()
            replica = serve.get_replica_context().replica_tag
            app.add_middleware(_ReplicaHeader, value=replica.encode())
            self.grpc = Servicer(app_state(app))
            return app

    for method in METHODS:
        setattr(Replica, method, _grpc_call(method))
    return serve.deployment(serve.ingress()(Replica), name=name, **options).bind()


def _grpc_call(method: str) -> Callable[..., Any]:
    """A deployment method that answers the gRPC call `method` (Ray passes `grpc_context`
    by that name; a status code set on it is what the client gets)."""

    def call(self: Any, request: Any, grpc_context: Any) -> Any:  # pragma: no cover
        return answer(self.grpc, method, request, grpc_context)

    call.__name__ = call.__qualname__ = method
    return call


class _ReplicaHeader:  # pragma: no cover  (runs in each replica)
    """ASGI middleware: REPLICA_HEADER on every HTTP response, so a client (and the replica-kill
    test) can tell which replica answered."""

    def __init__(self, app: Any, value: bytes) -> None:
        self.app, self.header = app, (REPLICA_HEADER.encode(), value)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, named if scope["type"] == "http" else send)


def config_from_args(args: Mapping[str, Any]) -> ServeConfig:
    """A ServeConfig from a Serve config file's `args` (or `serve run ... key=value`: strings)."""
    return ServeConfig.from_dict(args)


def config_args(config: ServeConfig) -> dict[str, Any]:
    """`config_from_args`'s input for `config`: what a Serve config file's `args` hold."""
    defaults = ServeConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != defaults[k]}


def app_builder(args: dict[str, Any]) -> Any:
    """The application of a Serve config file (`import_path: vae_serve.ray_serve:app_builder`)
    or of `serve run vae_serve.ray_serve:app_builder onnx_dir=out`: `args` are ServeConfig's
    fields; the deployment's options come from the config file's `deployments` entry."""
    return application(Bundle.read(config_from_args(args)), Replicas())


def grpc_options(port: int) -> dict[str, Any]:
    """Ray Serve's gRPC proxy on `port`, carrying the Open Inference Protocol's service."""
    check_int("grpc port", port, 1, 65535)
    return {"port": port, "grpc_servicer_functions": [SERVICER_FUNCTION]}


def serve_config(
    config: ServeConfig, replicas: Replicas, host: str, port: int, grpc_port: int | None = None
) -> dict[str, Any]:
    """A Serve config file's content (ServeDeploySchema) for `serve run` and `serve deploy`
    (with Ray Serve's gRPC proxy on `grpc_port` when given)."""
    config.check()
    check_int("port", port, 1, 65535)
    grpc = {} if grpc_port is None else {"grpc_options": grpc_options(grpc_port)}
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        **grpc,
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": config_args(config),
                "deployments": [{"name": APP_NAME, **replicas.options()}],
            }
        ],
    }


def write_serve_config(
    path: Path,
    config: ServeConfig,
    replicas: Replicas,
    host: str,
    port: int,
    *,
    force: bool = False,
    grpc_port: int | None = None,
) -> None:
    """Write `serve_config(...)` to `path` as YAML (checked, staged and renamed into place; an
    existing file replaced only with `force`)."""
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise VaeError(f"writing a Serve config file needs PyYAML; {INSTALL_HINT}") from None
    content = serve_config(config, replicas, host, port, grpc_port)
    text = "# Ray Serve config of mnist-vae (vae-serve --write-serve-config)\n"
    write_file(path, (text + yaml.safe_dump(content, sort_keys=False)).encode("utf-8"), force=force)


def free_port(host: str) -> int:
    """A port nothing listens on now (Ray Serve binds it by number, so 0 will not do)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Runs in `vae-serve --ray`'s own process (tests/cluster/test_ray.py starts it, joining the
# test's Ray instance, and stops it with SIGTERM; coverage is measured in-process).
def run(  # pragma: no cover
    config: ServeConfig,
    replicas: Replicas,
    host: str,
    port: int,
    address: str | None,
    announce: Callable[[str], None],
    grpc_port: int | None = None,
) -> str:
    """Deploy the service on Ray Serve (a local Ray instance, or the cluster at `address`),
    serve until SIGTERM or SIGINT, then delete the application (and stop the local instance)."""
    replicas.check()
    ray, serve = ray_modules()
    bundle = Bundle.read(config)  # a bad graph is refused before Ray starts
    port = port or free_port(host)
    started = time.perf_counter()
    with signals.deferred():  # Ray's start-up is not to be cut half-way
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    signals.install()  # ray.init put its own SIGTERM handler in place
    try:
        grpc = None if grpc_port is None else grpc_options(grpc_port or free_port(host))
        serve.start(http_options={"host": host, "port": port}, grpc_options=grpc)
        serve.run(application(bundle, replicas), name=APP_NAME, route_prefix="/")
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        url = base_url(host, port)
        grpc_at = "" if grpc is None else f"; gRPC at {base_url(host, grpc['port'])[7:]}"
        announce(
            f"serving {', '.join(bundle.models)} at {url} on Ray Serve "
            f"({_scaling(replicas)}, {where}, ready in {time.perf_counter() - started:.0f} s)"
            f"{grpc_at}"
        )
        how = ""
        try:
            while True:
                time.sleep(3600)
        except Interrupted as stop:
            how = f" by {stop.signal_name}"
        return f"stopped{how}; deleted the application {APP_NAME}"
    finally:
        with signals.deferred():
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()


def _scaling(replicas: Replicas) -> str:
    options = replicas.options()
    if "num_replicas" in options:
        return f"{options['num_replicas']} replica(s)"
    scaling = options["autoscaling_config"]
    return f"{scaling['min_replicas']}..{scaling['max_replicas']} replicas, autoscaling"
