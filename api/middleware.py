"""Pure ASGI middleware: a request id on every response, and the request body's guard (a per-route
size limit and a read timeout), plus :func:`send_error` for middleware that answers by itself.

The order in ``api.main`` is: request id -> authentication (``api.auth``) -> per-key limits
(``api.limits``) -> body guard -> the app. Nothing reads a byte of the body before the key is known.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

import anyio
import anyio.lowlevel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, RequestTimeout, ServiceError, UnsupportedMediaType

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MULTIPART_OVERHEAD = 1024 * 1024  # the form's boundaries, part headers and the purpose field


def new_request_id() -> str:
    """A fresh request id (``req_`` + 32 hex)."""
    return "req_" + uuid.uuid4().hex


def header(scope: Scope, name: bytes) -> str:
    """The first value of the request header ``name`` (lower case), or ``""``."""
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name), "")


def has_body(scope: Scope) -> bool:
    """Whether the request declares a body (a nonzero Content-Length, or Transfer-Encoding)."""
    declared = header(scope, b"content-length")
    return bool(header(scope, b"transfer-encoding")) or (declared.isdigit() and int(declared) > 0)


async def send_error(send: Send, exc: ServiceError, scope: Scope | None = None) -> None:
    """Answer ``exc`` in the OpenAI envelope (with its headers and the request id of ``scope``). Sent
    before the body was read, it closes the connection (``connection: close``): nobody reads the rest."""
    if scope is not None and has_body(scope):
        exc.headers.setdefault("connection", "close")
    body = json.dumps(exc.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    request_id = (scope or {}).get("state", {}).get("request_id")
    if request_id:
        headers.append((b"x-request-id", request_id.encode("latin-1")))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Sets ``scope["state"]["request_id"]`` (echoing a well-formed incoming ``x-request-id``) and adds
    ``x-request-id`` to every response it sends."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = header(scope, b"x-request-id")
        request_id = incoming if _SAFE_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in response_headers):
                    response_headers.append((b"x-request-id", raw_id))
                message["headers"] = response_headers
            await send(message)

        await self.app(scope, receive, send_with_id)


_STEP_PATHS = re.compile(r"^/v1/(fine_tuning/jobs/[^/]+/(steps|complete)|privtune/inference/sessions/[^/]+/forward)$")
FILES_PATH = "/v1/files"


def route_body_limit(max_step_bytes: int, max_file_bytes: int, request_body_limit: int) -> Callable[[Scope], int]:
    """The body limit of a request by its route (never by its Content-Type): step, completion and
    inference-forward payloads ``max_step_bytes``; ``POST /v1/files`` the file plus the form's
    overhead; anything else ``request_body_limit``."""

    def limit(scope: Scope) -> int:
        path = scope.get("path", "")
        if _STEP_PATHS.match(path):
            return max_step_bytes
        if path.rstrip("/") == FILES_PATH and scope.get("method") == "POST":
            return max_file_bytes + MULTIPART_OVERHEAD
        return request_body_limit

    return limit


class _Abort(Exception):
    pass


class BodyGuardMiddleware:
    """Guards the request body of every ``/v1/`` request (add it inside the authentication):

    - ``multipart/form-data`` anywhere but ``POST /v1/files``: 415, nothing read;
    - a declared ``Content-Length`` over ``body_limit(scope)``: 413, nothing read;
    - a streamed body that grows past the limit: 413 at that point (the app is cancelled);
    - a body that sends nothing for ``read_timeout_s``: 408 with ``connection: close`` (the app is cancelled).
    """

    def __init__(self, app: ASGIApp, body_limit: Callable[[Scope], int], read_timeout_s: float):
        self.app = app
        self.body_limit = body_limit
        self.read_timeout_s = float(read_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        content_type = header(scope, b"content-type").split(";")[0].strip().lower()
        is_upload = scope.get("path", "").rstrip("/") == FILES_PATH and scope.get("method") == "POST"
        if content_type == "multipart/form-data" and not is_upload:
            await send_error(send, UnsupportedMediaType("Only POST /v1/files accepts multipart/form-data."), scope)
            return
        limit = self.body_limit(scope)
        declared = header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await send_error(
                send, _too_large(f"The request body is {declared} bytes; the limit is {limit} bytes."), scope
            )
            return

        received, started, problem = 0, False, None
        cancel = anyio.CancelScope()

        async def guarded_receive() -> Message:
            nonlocal received, problem
            with anyio.move_on_after(self.read_timeout_s):
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        problem = _too_large(f"The request body exceeds the limit of {limit} bytes.")
                        raise _Abort
                return message
            problem = RequestTimeout(f"The request body sent nothing for {self.read_timeout_s:g} s.")
            raise _Abort

        async def receive_or_cancel() -> Message:
            try:
                return await guarded_receive()
            except _Abort:
                cancel.cancel()  # the app stops here, whatever it catches: cancellation is not an Exception
                await anyio.lowlevel.checkpoint()
                raise

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with cancel:
            await self.app(scope, receive_or_cancel, tracked_send)
        if problem is not None and not started:
            await send_error(send, problem, scope)


def _too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(message, headers={"connection": "close"})
