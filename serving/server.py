"""Run the ctpipe model server: kserve's REST app on a host we choose, one model per process.

kserve's ``RESTServer`` hard-codes ``host="0.0.0.0"`` in the uvicorn config it builds, and
``ModelServer`` always starts a gRPC server on all interfaces as well. ctpipe binds 127.0.0.1
by default, so :func:`serve` uses kserve's own classes to build the application (``ModelServer``
for the model registry, health, metadata and logging, ``RESTServer.create_application`` for the
routes, middlewares and exception handlers), puts :mod:`serving.http` in front of it (the body
limit, inference on worker threads, tokens) and runs that app with uvicorn on ``host``/``port``
itself. gRPC is not started. One extra route, ``GET /ctpipe/status``, reports what is served.

Command line::

    python -m serving.server --model-name churn --tracking-uri sqlite:///ws/mlflow.db --port 8080

:mod:`components.common.server_process` starts that command as a process (detached for the
embedded profile, pinned to one version for infra validation) and stops it again.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

from components.common.feast import EntityLookup
from components.common.logs import JsonFormatter, get_logger
from components.common.process_lifetime import collect_rarely
from components.common.registry import STATUS_ROUTE, redact_uri
from components.common.server_process import (
    ADMIN_TOKEN_ENV,
    ENTITY_LOOKUP_ENV,
    GRACEFUL_SHUTDOWN_SECONDS,
    SERVING_TOKEN_ENV,
)
from components.serving_spec import INFERENCE_LOG_HASH_KEY_ENV, RolloutSpec, ServingSpec
from serving.http import HttpSettings, add_routes
from serving.observability import InferenceLogWriter

logger = get_logger("serving.server")

_MAX_ROWS: int = ServingSpec.model_fields["max_batch_rows"].default
_MAX_BYTES: int = ServingSpec.model_fields["max_request_bytes"].default
_WORKER_THREADS: int = ServingSpec.model_fields["worker_threads"].default
# The rotated log: at most (1 + backups) x this many bytes on disk.
LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 3
_app_built = False


def build_app(model: Any, port: int, settings: HttpSettings) -> tuple[Any, ThreadPoolExecutor]:
    """Build kserve's FastAPI app serving ``model``, with ctpipe's routes in front and ``/ctpipe/status``.

    kserve keeps one module-level app, so this can run once per process.

    Args:
        model: A loaded ``CtpipeModel`` (its ``status()`` feeds the status route).
        port: The HTTP port, recorded by kserve's server objects (binding happens in :func:`serve`).
        settings: Body limit, tokens and worker threads of :mod:`serving.http`.

    Returns:
        The FastAPI application and the worker pool that scores requests.
    """
    global _app_built
    if _app_built:
        raise RuntimeError("the kserve app was already built in this process; run one server per process")
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer

    model_server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    model_server.register_model(model)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        model_server.dataplane,
        model_server.model_repository_extension,
        http_port=port,
    )
    rest.create_application()  # routes, middlewares and exception handlers on kserve's app
    from kserve.model_server import app

    async def ctpipe_status() -> dict[str, Any]:
        return dict(model.status())

    app.add_api_route(STATUS_ROUTE, ctpipe_status, methods=["GET"], tags=["ctpipe"])
    pool = add_routes(app, model, settings)
    _app_built = True
    return app, pool


def _settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector, and a busy worker thread, from pausing requests.

    The imported libraries (kserve, MLflow, scikit-learn, pandas, Feast) leave millions of
    long-lived objects; every full collection walks them all, which stalls every thread (health
    checks included) for a tenth of a second or more. Freezing them once loaded moves them out of
    the collector's sight, and a larger first-generation threshold makes young collections rarer
    while a large request allocates its objects.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    # A thread that scores a large request hands the GIL over every millisecond rather than every
    # five, so the event loop's few steps per health check wait less.
    sys.setswitchinterval(0.001)


def _configure_logging(log_file: str | None) -> None:
    """Send ctpipe's, kserve's and uvicorn's log lines to ``log_file`` (JSON, rotated), else stderr.

    The file rotates at :data:`LOG_FILE_BYTES` and keeps :data:`LOG_FILE_BACKUPS` old files, so
    a server that runs for months, or is flooded with bad requests, cannot fill the disk.
    """
    if not log_file:
        return
    from logging.handlers import RotatingFileHandler

    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    handler = RotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS)
    handler.setFormatter(JsonFormatter())
    for name in ("ctpipe", "kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers = [handler]
        named.propagate = False


def serve(
    model_name: str,
    tracking_uri: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    poll_seconds: float = 2.0,
    model_version: str | None = None,
    alias: str | None = None,
    trace_requests: bool = False,
    max_batch_rows: int = _MAX_ROWS,
    inference_log_dir: str | None = None,
    log_flush_seconds: float = 2.0,
    log_queue_rows: int = 100_000,
    entity_lookup: EntityLookup | None = None,
    http: HttpSettings | None = None,
    log_file: str | None = None,
    log_exclude: Sequence[str] = (),
    log_hash: Sequence[str] = (),
    log_hash_key: bytes = b"",
    rollout: RolloutSpec | None = None,
) -> None:
    """Serve one registered model until SIGINT or SIGTERM (blocking).

    Args:
        model_name: Registered model name in MLflow; the inference routes use it too.
        tracking_uri: MLflow tracking and registry URI.
        host: Address to bind; 127.0.0.1 keeps the server local (use 0.0.0.0 only in a container).
        port: HTTP port.
        poll_seconds: How often the registry aliases and canary tag are read.
        model_version: Serve exactly this version instead of following the aliases.
        alias: Serve only the version behind this alias, following it (a cluster traffic target).
        trace_requests: Keep kserve's per-request timing log lines.
        max_batch_rows: Most rows one request may carry (more: HTTP 413).
        inference_log_dir: Write the inference log here, a folder or a URI (``s3://...``; credentials
            from the environment); None logs nothing.
        log_flush_seconds: Longest time a logged row waits in memory.
        log_queue_rows: Rows the inference log may queue before it drops rows.
        entity_lookup: Feast settings for requests that carry entity ids.
        http: Body limit, tokens and worker threads; default: the ServingSpec defaults, no tokens.
        log_file: Write the log lines here, rotated; None writes them to stderr.
        log_exclude: Request columns the inference log never stores.
        log_hash: Request columns the inference log stores as HMAC-SHA256 digests under ``log_hash_key``.
        log_hash_key: The key of those digests (from the environment).
        rollout: The rollout strategy (``serving.rollout``); default a random canary.
    """
    # Until _settle_garbage_collector: loading the model imports MLflow, scikit-learn and onnxruntime.
    collect_rarely()
    http = http or HttpSettings(max_request_bytes=_MAX_BYTES)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # kserve's own response class triggers this on every request; nothing to act on here.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    import uvicorn

    from serving.model import CtpipeModel

    started = time.perf_counter()
    writer = None
    if inference_log_dir:
        writer = InferenceLogWriter(
            inference_log_dir, model_name, log_flush_seconds, log_queue_rows, log_exclude, log_hash, log_hash_key
        )
        writer.start()
    model = CtpipeModel(
        model_name,
        tracking_uri,
        poll_seconds=poll_seconds,
        pinned_version=model_version,
        followed_alias=alias,
        max_batch_rows=max_batch_rows,
        inference_log=writer,
        entity_lookup=entity_lookup,
        rollout=rollout,
    )
    model.load()
    app, pool = build_app(model, port, http)
    _settle_garbage_collector()
    _configure_logging(log_file)  # after kserve's ModelServer, which configures logging itself
    if not trace_requests:  # kserve logs two timing lines per request at INFO
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # kserve's ModelServer configured logging already
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        access_log=False,
    )
    server = uvicorn.Server(config)
    _let_sigterm_return()
    model.start_watcher()
    logger.info(
        "model server starting",
        extra={
            "model": model_name,
            "host": host,
            "port": port,
            "tracking_uri": redact_uri(tracking_uri),
            "status": model.status(),
            "rollout": model.rollout.model_dump(),
            "worker_threads": http.worker_threads,
            "max_request_bytes": http.max_request_bytes,
            "token_required": http.inference_token is not None,
            "model_repository_api": http.admin_token is not None,
            "load_seconds": round(time.perf_counter() - started, 3),
        },
    )
    try:
        server.run()
    finally:
        model.stop_watcher()
        pool.shutdown(wait=True)
        model.stop_shadow()  # shadow rows are queued for the inference log before it is written
        if writer is not None:
            # Every answered request was queued before its answer went out; write them all before exiting.
            writer.stop(timeout=max(10.0, 4 * log_flush_seconds))
            logger.info(
                "inference log flushed",
                extra={"written_rows": writer.written_rows, "dropped_rows": writer.dropped_rows, "files": writer.files},
            )
        logger.info("model server stopped", extra={"model": model_name, "port": port})


def _ignore_repeated_sigterm(signum: int, frame: FrameType | None) -> None:
    """The handler uvicorn's re-raised SIGTERM finds: the shutdown is already under way."""


def _let_sigterm_return() -> None:
    """Make a SIGTERM end :func:`serve` normally, so the inference log is written before exit.

    uvicorn handles SIGTERM (stops accepting, drains requests) and then raises the signal again
    with the handler it found before it started. With the default handler that kills the process
    there, before the ``finally`` of :func:`serve` writes the rows still queued; the kubelet (and
    :mod:`components.common.server_process`) stop the server with SIGTERM. With this handler the
    process exits 0 once the log is written.
    """
    if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
        signal.signal(signal.SIGTERM, _ignore_repeated_sigterm)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``python -m serving.server``."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve an MLflow registered model with KServe's V1/V2 REST protocol. The server follows "
        "the 'champion' and 'challenger' aliases and the ctpipe.canary_percent tag.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model-name", required=True, help="Registered model name (also the route name).")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to bind; 0.0.0.0 only inside a container.")
    parser.add_argument("--port", type=int, default=8080, help="HTTP port.")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="Seconds between registry polls.")
    parser.add_argument(
        "--model-version",
        default=None,
        help="Serve only this version and ignore the aliases.",
    )
    parser.add_argument(
        "--alias",
        default=None,
        help="Serve only the version behind this alias and follow it, e.g. 'champion' (each KServe traffic "
        "target of a cluster follows one alias; KServe splits the traffic). Default: champion and challenger, "
        "split by the ctpipe.canary_percent tag.",
    )
    parser.add_argument("--trace-requests", action="store_true", help="Log kserve's timing lines for every request.")
    parser.add_argument("--max-batch-rows", type=int, default=_MAX_ROWS, help="Most rows per request.")
    parser.add_argument(
        "--inference-log-dir", default=None, help="Write the inference log (parquet) here: folder or s3:// URI."
    )
    parser.add_argument("--log-flush-seconds", type=float, default=2.0, help="Inference log flush interval.")
    parser.add_argument("--log-queue-rows", type=int, default=100_000, help="Inference log queue size in rows.")
    parser.add_argument(
        "--log-exclude",
        action="append",
        default=[],
        metavar="COLUMN",
        help="A request column the inference log never stores (repeatable).",
    )
    parser.add_argument(
        "--log-hash",
        action="append",
        default=[],
        metavar="COLUMN",
        help="A request column the inference log stores as an HMAC-SHA256 hex digest (repeatable); the key is "
        "read from the variable --log-hash-key-env names.",
    )
    parser.add_argument(
        "--log-hash-key-env",
        default=INFERENCE_LOG_HASH_KEY_ENV,
        help="Environment variable holding the inference log hash key.",
    )
    parser.add_argument(
        "--max-request-bytes", type=int, default=_MAX_BYTES, help="Largest request body; larger ones get HTTP 413."
    )
    parser.add_argument(
        "--worker-threads", type=int, default=_WORKER_THREADS, help="Threads that decode and score requests."
    )
    parser.add_argument(
        "--require-token",
        action="store_true",
        help=f"Inference routes require 'Authorization: Bearer <token>'; the token is read from ${SERVING_TOKEN_ENV}.",
    )
    parser.add_argument(
        "--model-repository-api",
        action="store_true",
        help="Enable POST /v2/repository/models/NAME/load and /unload, which require 'Authorization: Bearer "
        f"<token>' with the token from ${ADMIN_TOKEN_ENV}. Off: they answer 404.",
    )
    parser.add_argument(
        "--rollout",
        default=None,
        metavar="JSON",
        help='The rollout strategy and its settings as JSON, e.g. \'{"strategy": "ab", "sticky_header": '
        '"x-user-id"}\' (serving.rollout; docs/serving.md). Default: a random canary.',
    )
    parser.add_argument("--log-file", default=None, help="Write the log here as JSON lines, rotated at 10 MiB.")
    args = parser.parse_args(argv)
    if not args.tracking_uri:
        parser.error("--tracking-uri is required (or set MLFLOW_TRACKING_URI)")
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be 1-65535, got {args.port}")
    if args.poll_seconds <= 0:
        parser.error(f"--poll-seconds must be positive, got {args.poll_seconds}")
    if args.alias is not None and args.model_version is not None:
        parser.error("--alias and --model-version exclude each other: follow an alias or serve one version")
    if args.max_batch_rows < 1:
        parser.error(f"--max-batch-rows must be at least 1, got {args.max_batch_rows}")
    if args.max_request_bytes < 1024:
        parser.error(f"--max-request-bytes must be at least 1024, got {args.max_request_bytes}")
    if not 1 <= args.worker_threads <= 64:
        parser.error(f"--worker-threads must be 1-64, got {args.worker_threads}")
    inference_token = os.environ.get(SERVING_TOKEN_ENV) or None
    admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
    if args.require_token and inference_token is None:
        parser.error(f"--require-token needs the token in ${SERVING_TOKEN_ENV}; it is empty")
    if args.model_repository_api and admin_token is None:
        parser.error(f"--model-repository-api needs the admin token in ${ADMIN_TOKEN_ENV}; it is empty")
    http = HttpSettings(
        max_request_bytes=args.max_request_bytes,
        inference_token=inference_token if args.require_token else None,
        admin_token=admin_token if args.model_repository_api else None,
        worker_threads=args.worker_threads,
    )
    hash_key = os.environ.get(args.log_hash_key_env, "")
    if args.log_hash and not hash_key:
        parser.error(
            f"--log-hash {args.log_hash} needs the hash key in ${args.log_hash_key_env}; it is empty (the inference "
            "log would store those columns unprotected, so the server does not start)"
        )
    both = sorted(set(args.log_hash) & set(args.log_exclude))
    if both:
        parser.error(f"column(s) {both} are both --log-exclude and --log-hash; name each once")
    rollout = None
    if args.rollout:
        try:
            rollout = RolloutSpec.model_validate_json(args.rollout)
        except ValueError as exc:
            parser.error(f"--rollout is not a valid serving.rollout: {exc}")
    if rollout is not None and rollout.strategy != "canary" and args.alias is not None:
        parser.error(f"--rollout strategy {rollout.strategy!r} routes inside one server; it excludes --alias")
    lookup = os.environ.get(ENTITY_LOOKUP_ENV)
    # kserve parses sys.argv with its own parser when it is imported; these flags are ours.
    sys.argv = sys.argv[:1]
    serve(
        args.model_name,
        args.tracking_uri,
        args.host,
        args.port,
        args.poll_seconds,
        args.model_version,
        args.alias,
        args.trace_requests,
        args.max_batch_rows,
        args.inference_log_dir,
        args.log_flush_seconds,
        args.log_queue_rows,
        EntityLookup.model_validate_json(lookup) if lookup else None,
        http,
        args.log_file,
        args.log_exclude,
        args.log_hash,
        hash_key.encode(),
        rollout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
