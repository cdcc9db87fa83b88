"""``Idempotency-Key`` on JSON POSTs: a retried create answers the first response and creates nothing.

Pure ASGI middleware (:class:`IdempotencyMiddleware`, added by :func:`install_idempotency`). For a POST
with an ``Idempotency-Key`` header and a JSON (or empty) body from an authenticated caller:

- the first request claims ``(organization, key)`` and runs; its response (status + JSON object body)
  is stored unless it says "retry": a 5xx, 408, 429 or any response with ``Retry-After`` (the claim is
  then released, so the client's retry runs again);
- a retry with the same method, path, query and body (compared as canonical JSON) gets the stored
  response replayed with ``idempotent-replayed: true``, and the route does not run;
- the same key with another method, path or body is 400 ``idempotency_key_reused``;
- a retry while the first request is still running is 409 ``idempotency_key_in_use`` with
  ``x-should-retry: true`` (an unanswered claim older than :data:`STALE_AFTER_S` is taken over);
- entries expire after ``settings.idempotency_ttl_s`` (:func:`purge_idempotency_keys`, for the sweep).

Multipart uploads and binary bodies (steps) pass through untouched, as do requests without a key or
without a valid bearer key (the route answers those). The caller is ``scope["state"]["principal"]``
when an outer middleware set it, else the bearer key is authenticated here (``repo.authenticate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.db.repo import idempotency as store
from service.db.repo.keys import authenticate
from service.db.session import session_scope
from service.errors import BadRequest, Conflict, ServiceError
from service.settings import Settings

log = logging.getLogger("api.idempotency")

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
MAX_KEY_LENGTH = 256
#: An unanswered claim older than this (seconds) belongs to a request that died with its process.
STALE_AFTER_S = 600
_KEY_RE = re.compile(rf"^[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}$")  # printable ASCII, no spaces
_JSON_TYPES = ("", "application/json")
_RETRY_STATUSES = frozenset({408, 429})


def install_idempotency(app: FastAPI) -> None:
    """Add :class:`IdempotencyMiddleware` to ``app`` (whose ``state`` has ``settings`` and
    ``session_factory``). Call it before adding the request-context middleware, so that one stays
    outside (request ids and body limits apply to replays and to the bodies read here). Installing
    twice is a no-op."""
    if not any(m.cls is IdempotencyMiddleware for m in app.user_middleware):
        app.add_middleware(IdempotencyMiddleware)


def purge_idempotency_keys(session_factory: sessionmaker[Session], settings: Settings, now: int | None = None) -> int:
    """Delete the entries older than ``settings.idempotency_ttl_s``; returns how many (for the sweep)."""
    with session_scope(session_factory) as session:
        return store.purge_expired(session, settings.idempotency_ttl_s, now)


class IdempotencyMiddleware:
    """See the module docstring. Reads ``settings`` and ``session_factory`` from the app's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = headers.get(HEADER)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if key is None or content_type not in _JSON_TYPES:
            await self.app(scope, receive, send)
            return
        if not _KEY_RE.match(key):
            await _send_error(
                send,
                BadRequest(
                    f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
                    param="Idempotency-Key",
                    code="invalid_idempotency_key",
                ),
            )
            return
        state = scope["app"].state
        settings: Settings = state.settings
        chunks, complete, error = await _read_body(receive, settings.request_body_limit)
        replay_receive = _replaying(chunks, receive, complete, error)
        within_limit = complete and sum(map(len, chunks)) <= settings.request_body_limit
        try:
            org_id = await self._organization(scope, headers, state.session_factory)
        except Exception as exc:  # the database is down: let the route answer (503) as without a key
            log.warning("idempotency: could not authenticate: %s", exc)
            org_id = None
        if org_id is None or not within_limit:  # unauthenticated (401) or too large (413): the route answers
            await self.app(scope, replay_receive, send)
            return
        body = b"".join(chunks)
        request = {
            "organization_id": org_id,
            "key": key,
            "method": "POST",
            "path": scope["path"][:512],
            "request_hash": _request_hash(scope.get("query_string", b""), body),
        }
        try:
            claim = await anyio.to_thread.run_sync(self._claim, state.session_factory, settings, request)
        except Exception as exc:
            from api.errors import to_service_error

            await _send_error(send, to_service_error(exc))
            return
        if claim.outcome == "replay":
            await _send_json(send, claim.status_code or 200, claim.response or {}, [(REPLAYED_HEADER, "true")])
        elif claim.outcome == "mismatch":
            await _send_error(
                send,
                BadRequest(
                    "This Idempotency-Key was already used with a different request (method, path or body); "
                    "use a new key for a new request.",
                    param="Idempotency-Key",
                    code="idempotency_key_reused",
                ),
            )
        elif claim.outcome == "in_progress":
            error = Conflict(
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                retryable=True,
                param="Idempotency-Key",
                code="idempotency_key_in_use",
            )
            error.headers["x-should-retry"] = "true"
            await _send_error(send, error)
        else:
            await self._run_first(scope, replay_receive, send, state.session_factory, org_id, key)

    async def _organization(self, scope: Scope, headers: dict[str, str], factory: sessionmaker[Session]) -> str | None:
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            return principal.organization_id
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None

        def check() -> str | None:
            with session_scope(factory) as session:
                found = authenticate(session, token.strip())
            return None if found is None else found.organization_id

        return await anyio.to_thread.run_sync(check)

    @staticmethod
    def _claim(factory: sessionmaker[Session], settings: Settings, request: dict[str, Any]) -> store.Claim:
        with session_scope(factory) as session:
            return store.claim(session, **request, ttl_s=settings.idempotency_ttl_s, stale_after_s=STALE_AFTER_S)

    async def _run_first(
        self, scope: Scope, receive: Receive, send: Send, factory: sessionmaker[Session], org_id: str, key: str
    ) -> None:
        status: int | None = None
        storable = True
        body: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status, storable
            if message["type"] == "http.response.start":
                status = int(message["status"])
                names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
                storable = (
                    status < 500
                    and status not in _RETRY_STATUSES
                    and "retry-after" not in names
                    and names.get("content-type", "").split(";")[0].strip() == "application/json"
                )
            elif message["type"] == "http.response.body" and storable:
                body.append(message.get("body", b""))
            await send(message)

        response: dict[str, Any] | None = None
        try:
            await self.app(scope, receive, capture)
            if storable and status is not None:
                response = _json_object(b"".join(body))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_finish, factory, org_id, key, status, response)


def _finish(
    factory: sessionmaker[Session], org_id: str, key: str, status: int | None, response: dict[str, Any] | None
) -> None:
    """Store the first response, or release the claim when it must not be replayed."""
    try:
        with session_scope(factory) as session:
            if status is not None and response is not None:
                store.complete(session, organization_id=org_id, key=key, status_code=status, response=response)
            else:
                store.release(session, organization_id=org_id, key=key)
    except Exception as exc:  # the response was sent; a stale claim is taken over after STALE_AFTER_S
        log.warning("idempotency: could not record the response of key %r: %s", key, exc)


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _request_hash(query: bytes, body: bytes) -> str:
    """sha256 of the query and the body; a JSON body as canonical JSON (key order and spacing do not
    matter), anything else as its bytes."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode() if body else b""
    except (ValueError, RecursionError):
        canonical = body
    return hashlib.sha256(query + b"\n" + canonical).hexdigest()


async def _read_body(receive: Receive, limit: int) -> tuple[list[bytes], bool, Exception | None]:
    """The body's chunks as read, whether they are the whole body, and the exception ``receive``
    raised (an outer body limit or read timeout). Stops reading once more than ``limit`` bytes arrived
    (or the client left): the rest stays in ``receive``."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            message = await receive()
        except Exception as exc:  # raised again to the route, whose exception handlers render it
            return chunks, False, exc
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False):
            return chunks, True, None
    return chunks, False, None


def _replaying(chunks: list[bytes], receive: Receive, complete: bool, error: Exception | None) -> Callable[[], Any]:
    """A ``receive`` that yields the chunks already read, then raises ``error`` if reading failed,
    else goes on with ``receive`` (the rest of the body, or after a complete one http.disconnect)."""
    pending = list(chunks)

    async def replay() -> Message:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not complete}
        if error is not None:
            raise error
        return await receive()

    return replay


async def _send_json(send: Send, status: int, payload: dict[str, Any], extra: list[tuple[str, str]]) -> None:
    data = json.dumps(payload).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _send_error(send: Send, error: ServiceError) -> None:
    await _send_json(send, error.status_code, error.body(), list(error.headers.items()))
