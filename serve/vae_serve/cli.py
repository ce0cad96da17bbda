"""`vae-serve`'s command line: it parses options and calls one function, `server.serve` (uvicorn
on this machine), `ray_serve.run` (`--ray`: Ray Serve, here or on a cluster) or
`ray_serve.write_serve_config` (`--write-serve-config`: a file for Ray's `serve run`/`serve
deploy`). Ray is imported only on those two paths."""

from __future__ import annotations

from pathlib import Path

import typer

from vae_runtime.console import VaeCommand, make_app
from vae_runtime.errors import InvalidArgumentError, check_int

from .app import ServeConfig
from .server import Listen, serve

_HELP = (
    "Serve the exported graphs over HTTP with the Open Inference Protocol (KServe V2 REST, JSON "
    "and binary tensors): models decoder, encoder, sampler and the graphs of other precisions "
    "(decoder_int8, ...), plus /samples.png (vae-generate's grid) and Prometheus /metrics. "
    "Binds 127.0.0.1 unless --host says otherwise; stops on SIGTERM or Ctrl-C after answering "
    "the requests in flight. With --ray, the same app runs as a Ray Serve deployment (replicas, "
    "autoscaling, a cluster with --ray-address); needs pip install 'mnist-vae[ray]'. Writes: "
    "nothing, except the file of --write-serve-config FILE (an existing one only with --force)."
)

app = make_app(_HELP)


@app.command(cls=VaeCommand, help=_HELP)
def serve_command(
    onnx_dir: Path | None = typer.Option(
        None,
        "--onnx-dir",
        help="The folder vae-export wrote: every graph its manifest.json lists is served.",
        show_default=False,
    ),
    decoder: Path | None = typer.Option(
        None, "--decoder", "--onnx", help="Or a decoder.onnx on its own.", show_default=False
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="With --decoder: an encoder.onnx too.", show_default=False
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        metavar="fp32|int8|fp16",
        help="Which graphs of --onnx-dir are served as decoder/encoder (and draw the sampler's "
        "and /samples.png's images); the others as decoder_<precision>, encoder_<precision>.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", help="Port to bind (0: any free port)."),
    grpc_port: int | None = typer.Option(
        None,
        "--grpc-port",
        help="Also serve the protocol over gRPC (inference.GRPCInferenceService, as "
        "tritonclient.grpc calls it) on this port (0: any free port), from the same models; "
        "one process (--workers 1).",
        show_default=False,
    ),
    workers: int = typer.Option(1, "--workers", help="uvicorn worker processes."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="onnxruntime threads per graph run. One: concurrent requests already keep the "
        "cores busy (and --workers adds processes); more only speeds up lone large batches.",
    ),
    provider: list[str] = typer.Option(
        [], "--provider", help="onnxruntime execution provider (repeat).", show_default=False
    ),
    max_batch: int = typer.Option(1024, "--max-batch", help="Rows per inference request."),
    max_body_mb: int = typer.Option(16, "--max-body-mb", help="Request body cap, MiB."),
    max_grid: int = typer.Option(1024, "--max-grid", help="Images in one /samples.png."),
    max_score_rows: int = typer.Option(
        1 << 20,
        "--max-score-rows",
        help="The scorer's cap: k x images in one request (decoder rows; above it: 400).",
    ),
    model_control: str = typer.Option(
        "none",
        "--model-control",
        metavar="none|poll|explicit",
        help="Live model updates. poll: load a new export of --onnx-dir when its manifest.json "
        "changes (verified off the request path, swapped in atomically; a bad one is refused "
        "and the old graphs keep serving). explicit: Triton's POST "
        "/v2/repository/models/<name>/load and /unload.",
    ),
    poll_seconds: float = typer.Option(
        2.0, "--poll-seconds", help="With --model-control poll: how often to look."
    ),
    cors_origin: list[str] = typer.Option(
        [],
        "--cors-origin",
        help="Let browser pages of this origin call the service (repeat; default: CORS off).",
        show_default=False,
    ),
    drain_seconds: int = typer.Option(
        30, "--drain-seconds", help="At a stop, wait this long for requests in flight."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run on Ray Serve: a local Ray instance, or the cluster of --ray-address.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Join this Ray cluster (auto, host:6379, ray://host:10001) instead of starting one.",
        show_default=False,
    ),
    num_replicas: int | None = typer.Option(
        None, "--num-replicas", help="Replicas, each with its own graphs  [default: 1]"
    ),
    min_replicas: int | None = typer.Option(
        None, "--min-replicas", help="Autoscaling: fewest replicas  [default: 1]"
    ),
    max_replicas: int | None = typer.Option(
        None, "--max-replicas", help="Autoscaling (on when given): most replicas."
    ),
    target_ongoing_requests: float | None = typer.Option(
        None,
        "--target-ongoing-requests",
        help="Autoscaling: requests in flight per replica to aim at  [default: 2]",
    ),
    max_ongoing_requests: int = typer.Option(
        5, "--max-ongoing-requests", help="Requests one replica takes at once (more queue)."
    ),
    num_cpus: float = typer.Option(1.0, "--num-cpus", help="CPUs Ray reserves per replica."),
    write_serve_config: Path | None = typer.Option(
        None,
        "--write-serve-config",
        help="Write a Serve config file for Ray's `serve run FILE` / `serve deploy FILE` with "
        "these options, and exit (the graph paths must exist where the app is built).",
        show_default=False,
    ),
    force: bool = typer.Option(
        False, "--force", "-f", help="Replace the --write-serve-config file if it exists."
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Print nothing but errors: no start and stop lines, uvicorn's log level 'error'.",
    ),
) -> None:
    """Serve the graphs over HTTP (Open Inference Protocol)."""

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    config = ServeConfig(
        onnx_dir=onnx_dir,
        decoder=decoder,
        encoder=encoder,
        precision=precision,
        threads=threads,
        providers=tuple(provider),
        max_batch=max_batch,
        max_body_bytes=check_int("max body MiB", max_body_mb, 1, 2047) << 20,
        max_grid=max_grid,
        cors_origins=tuple(cors_origin),
        max_score_rows=max_score_rows,
        model_control=model_control,
        poll_seconds=poll_seconds,
    )
    on_ray = ray or ray_address is not None
    if model_control == "explicit" and workers != 1:
        raise InvalidArgumentError(
            "--model-control explicit needs --workers 1: a load or unload call reaches one "
            "worker process only (poll works with any number: each worker polls)"
        )
    ray_options = (num_replicas, min_replicas, max_replicas, target_ongoing_requests)
    if not (on_ray or write_serve_config) and (
        any(v is not None for v in ray_options) or (max_ongoing_requests, num_cpus) != (5, 1.0)
    ):
        raise InvalidArgumentError("replica options go with --ray or --write-serve-config")
    if force and write_serve_config is None:
        raise InvalidArgumentError(
            "--force goes with --write-serve-config (the only file vae-serve writes)"
        )
    if not (on_ray or write_serve_config):
        level = "error" if quiet else log_level
        listen = Listen(host, port, workers, level, access_log, drain_seconds, grpc_port)
        say(serve(config, listen, say))
        return
    if workers != 1:
        raise InvalidArgumentError("with Ray Serve, scale with --num-replicas, not --workers")
    if model_control != "none":
        raise InvalidArgumentError(
            "under Ray Serve a model update is a redeploy (serve deploy, or vae-serve --ray "
            "again): leave --model-control at none"
        )
    from . import ray_serve  # imports ray only when it runs

    replicas = ray_serve.Replicas(
        num_replicas,
        min_replicas,
        max_replicas,
        target_ongoing_requests,
        max_ongoing_requests,
        num_cpus,
    ).check()
    if write_serve_config is not None:
        ray_serve.write_serve_config(
            write_serve_config, config, replicas, host, port, force=force, grpc_port=grpc_port
        )
        say(
            f"wrote {write_serve_config}; run it with `serve run {write_serve_config}` "
            f"(or `serve deploy {write_serve_config}` on a running cluster)"
        )
        return
    # Runs in vae-serve --ray's own process (tests/cluster/test_ray.py starts it for real).
    check_int("port", port, 0, 65535)  # pragma: no cover
    done = ray_serve.run(  # pragma: no cover
        config, replicas, host, port, ray_address, say, grpc_port
    )
    say(done)  # pragma: no cover
