"""ctpipe's HTTP layer on kserve's app: bounded bodies, tokens, and inference off the event loop.

kserve's app answers health, readiness, metadata and ``/metrics``. ctpipe puts these in front
of it, because kserve's own inference routes parse the body on the event loop (one large
request stalls every other request, liveness included) and its model-repository routes need no
credentials:

- :class:`BodyLimit`, an ASGI middleware, answers 413 to a body larger than
  ``max_request_bytes`` before anything reads it: from ``Content-Length``, or while reading a
  chunked body.
- The V1 ``:predict`` and V2 ``/infer`` routes read the body on the event loop (socket work),
  then decode, validate, score and encode it on a pool of worker threads
  (:meth:`serving.model.CtpipeModel.infer_v1` and ``infer_v2``). They take an optional bearer
  token.
- ``/v2/health/ready`` answers 503 while no version is loaded (kserve's answers ready always).
- ``GET /v2/models/<name>`` (metadata) keeps each output's ``parameters`` (a multiclass model's
  class names), which kserve's response model drops.
- ``/v2/repository/...`` (load, unload) answers 404 unless an admin token is configured, and
  401 without that token.
- Every 4xx is answered ``{"error": message}`` (the message is capped) and logged as one line
  without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from components.common.logs import get_logger
from serving.decoding import RequestRejected, checked_request_id
from serving.model import CtpipeModel
from serving.observability import BODIES_TOO_LARGE, UNAUTHORIZED

logger = get_logger("serving.http")

# Longest error message an answer carries (and a log line repeats).
MAX_ERROR_CHARS = 1000
_BINARY_HEADER = "inference-header-content-length"
_BODY_METHODS = {b"POST", b"PUT", b"PATCH"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class HttpSettings:
    """What the HTTP layer enforces.

    Args:
        max_request_bytes: Largest request body; larger ones get 413 before they are read.
        inference_token: Bearer token the inference routes require; None leaves them open.
        admin_token: Bearer token of the model-repository routes; None switches them off.
        worker_threads: Threads that decode, validate and score requests.
    """

    max_request_bytes: int
    inference_token: str | None = None
    admin_token: str | None = None
    worker_threads: int = 4


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json", headers=headers)


def rejected(status: int, message: str, route: str, request_id: str | None = None, **headers: str) -> Response:
    """A 4xx answer ``{"error": message}`` and its one log line (no traceback; message capped)."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + f"... ({len(message) - MAX_ERROR_CHARS} more characters)"
    logger.warning(
        "request rejected",
        extra={"status": status, "route": route, "request_id": request_id, "error": message[:300]},
    )
    return _json(status, {"error": message}, headers or None)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, decided before the app reads any of it.

    A declared ``Content-Length`` is checked before reading; a chunked body is read here, up to
    the limit, and handed on whole.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check one request's size, then hand it to the app."""
        if scope["type"] != "http" or scope.get("method", "").encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = next((value for key, value in scope["headers"] if key == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                await self._answer(scope, send, rejected(400, f"Content-Length {declared[:40]!r} is not a number", "*"))
                return
            if int(declared) > self.max_bytes:
                await self._too_large(scope, send, f"{int(declared)} bytes")
                return
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, send, f"more than {self.max_bytes} bytes (chunked)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send, size: str) -> None:
        BODIES_TOO_LARGE.inc()
        message = (
            f"request body has {size}; at most {self.max_bytes} bytes are accepted (serving.max_request_bytes). "
            "Send fewer rows per request."
        )
        # The unread body is not drained: the connection is closed after this answer.
        await self._answer(scope, send, rejected(413, message, scope.get("path", ""), connection="close"))

    @staticmethod
    async def _answer(scope: Scope, send: Send, response: Response) -> None:
        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, nothing, send)


def _not_here(asked: str, served: str) -> str:
    """The 404 message for a model name this server does not serve."""
    return f"model {asked[:100]!r} is not served here; this server serves {served!r}"


def _token_problem(request: Request, token: str | None) -> str | None:
    """Why the request's bearer token is not accepted; None when it is (or none is required)."""
    if token is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "this endpoint requires 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode()):
        return "the bearer token is not valid"
    return None


def add_routes(app: Any, model: CtpipeModel, settings: HttpSettings) -> ThreadPoolExecutor:
    """Put ctpipe's inference and model-repository routes before kserve's, and the body limit around all.

    Args:
        app: kserve's FastAPI application, routes already registered.
        model: The model the routes serve.
        settings: Limits and tokens.

    Returns:
        The worker pool (shut it down when the server stops).
    """
    pool = ThreadPoolExecutor(max_workers=settings.worker_threads, thread_name_prefix="ctpipe-infer")

    async def infer(request: Request, model_name: str, route: str, work: Callable[..., dict[str, Any]]) -> Response:
        request_id: str | None = None
        try:
            problem = _token_problem(request, settings.inference_token)
            if problem:
                UNAUTHORIZED.labels(route).inc()
                return rejected(401, problem, route, **{"www-authenticate": "Bearer"})
            request_id = checked_request_id(request.headers.get("x-request-id"), "header x-request-id")
            if model_name != model.name:
                return rejected(404, _not_here(model_name, model.name), route)
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise RequestRejected(
                    f"content-encoding {encoding[:40]!r} is not supported; send the body uncompressed", 415
                )
            body = await request.body()
            binary = request.headers.get(_BINARY_HEADER)
            args: tuple[Any, ...] = (body, request.headers.get("content-type"), request_id)
            if route == "v2" and binary is not None:
                if not binary.isdigit():
                    raise InvalidInput(f"header {_BINARY_HEADER} must be a number of bytes, got {binary[:40]!r}")
                args = (*args, int(binary))
            header = model.rollout.sticky_header
            key = request.headers.get(header) if header else None  # the ab key; checked where it is used
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(pool, lambda: orjson.dumps(work(*args, route_key=key)))
            return Response(answer, media_type="application/json")
        except RequestRejected as exc:
            return rejected(exc.status, str(exc), route, request_id)
        except InvalidInput as exc:
            return rejected(400, str(exc), route, request_id)
        except ClientDisconnect:
            return rejected(400, "the client closed the connection before sending the whole body", route, request_id)
        except InferenceError as exc:
            status = 503 if str(exc.status) == "503" else 500
            if status == 503:
                return rejected(503, str(exc), route, request_id)
            logger.error("inference failed", extra={"route": route, "request_id": request_id, "error": str(exc)[:500]})
            return _json(500, {"error": str(exc)[:MAX_ERROR_CHARS]})

    async def v1_predict(model_name: str, request: Request) -> Response:
        return await infer(request, model_name, "v1", model.infer_v1)

    async def v2_infer(model_name: str, request: Request) -> Response:
        return await infer(request, model_name, "v2", model.infer_v2)

    async def repository(rest: str, request: Request) -> Response:
        route = "repository"
        if settings.admin_token is None:
            return rejected(
                404,
                "the model repository API (load, unload) is switched off; enable serving.model_repository_api "
                "and set the admin token to use it",
                route,
            )
        problem = _token_problem(request, settings.admin_token)
        if problem:
            UNAUTHORIZED.labels(route).inc()
            return rejected(401, problem, route, **{"www-authenticate": "Bearer"})
        parts = rest.split("/")
        if rest == "index" and request.method == "POST":
            return _json(200, [{"name": model.name, "state": "READY" if model.ready else "UNAVAILABLE"}])
        if len(parts) != 3 or parts[0] != "models" or parts[2] not in ("load", "unload") or request.method != "POST":
            return rejected(404, f"no repository route {request.method} /v2/repository/{rest[:100]}", route)
        if parts[1] != model.name:
            return rejected(404, _not_here(parts[1], model.name), route)
        loop = asyncio.get_running_loop()
        if parts[2] == "unload":
            await loop.run_in_executor(pool, model.unload)
            return _json(200, {"name": model.name, "unload": True})
        ready = await loop.run_in_executor(pool, model.reload)
        if not ready:
            return rejected(503, f"model {model.name!r} has no version to serve in the registry", route)
        return _json(200, {"name": model.name, "load": True})

    async def metadata(model_name: str) -> Response:
        # kserve's own route answers through a response model whose tensors have no parameters, which
        # would drop a multiclass model's class names (serving.answers.output_types); this one keeps them.
        if model_name != model.name:
            return rejected(404, _not_here(model_name, model.name), "metadata")
        body = {
            "name": model.name,
            "versions": None,
            "platform": "",
            "inputs": model.get_input_types(),
            "outputs": model.get_output_types(),
        }
        return _json(200, body)

    async def server_ready() -> Response:
        # kserve's own answer is always "ready"; this one is ready only while a version is loaded.
        if model.ready:
            return _json(200, {"ready": True})
        return _json(503, {"ready": False, "error": f"model {model.name!r} has no version loaded"})

    routes_before = len(app.router.routes)
    app.add_api_route("/v2/health/ready", server_ready, methods=["GET"], tags=["ctpipe"])
    app.add_api_route("/v1/models/{model_name}:predict", v1_predict, methods=["POST"], tags=["ctpipe"])
    app.add_api_route("/v2/models/{model_name}/infer", v2_infer, methods=["POST"], tags=["ctpipe"])
    app.add_api_route("/v2/repository/{rest:path}", repository, methods=["GET", "POST"], tags=["ctpipe"])
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"], tags=["ctpipe"])
    # Starlette takes the first route that matches: ours go in front of kserve's.
    ours = app.router.routes[routes_before:]
    del app.router.routes[routes_before:]
    app.router.routes[0:0] = ours
    _quiet_expected_errors(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    return pool


def _quiet_expected_errors(app: Any) -> None:
    """Log one line, not kserve's traceback, for every 4xx/503 of kserve's own routes.

    kserve logs every 4xx/503 of its own routes with a traceback; log one line instead.
    """

    def handler(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def answer(request: Request, exc: Exception) -> Response:
            return rejected(status, str(exc), request.url.path)

        return answer

    app.add_exception_handler(InvalidInput, handler(400))
    app.add_exception_handler(ModelNotFound, handler(404))
    app.add_exception_handler(ModelNotReady, handler(503))
    app.add_exception_handler(ServerNotReady, handler(503))
