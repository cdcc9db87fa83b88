"""Pure ASGI middleware: a request id on every response, and request-body size limits."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    """A fresh request id (``req_`` + 32 hex)."""
    return "req_" + uuid.uuid4().hex


class RequestContextMiddleware:
    """Sets ``scope["state"]["request_id"]`` (echoing a well-formed incoming ``x-request-id``), adds
    ``x-request-id`` to every response it sends, and answers 413 when the declared or streamed body
    exceeds ``body_limit(path, content_type)`` bytes."""

    def __init__(self, app: ASGIApp, body_limit: Callable[[str, str], int]):
        self.app = app
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        incoming = headers.get("x-request-id", "")
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

        limit = self.body_limit(scope.get("path", ""), headers.get("content-type", "").split(";")[0].strip().lower())
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send_with_id, int(declared), limit)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"The request body exceeds the limit of {limit} bytes.")
            return message

        await self.app(scope, limited_receive, send_with_id)


async def _too_large(send: Send, declared: int, limit: int) -> None:
    message = f"The request body is {declared} bytes; the limit is {limit} bytes."
    body = json.dumps(error_body(message, "invalid_request_error", None, "payload_too_large")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
