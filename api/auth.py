"""Authentication before any work: a pure ASGI middleware that resolves the bearer key of every
``/v1/`` request before the app receives a byte of its body.

The key is looked up with ``service.db.repo.authenticate`` in a worker thread (a short database
read). A missing or unknown key is answered 401 in the OpenAI envelope (codes ``missing_api_key`` /
``invalid_api_key``, as ``api.deps.get_principal`` always said) without reading the body; a database
outage is 503. The principal is left in ``scope["state"]["principal"]`` for ``api.deps.get_principal``.
Probes, metrics, the docs and the dashboard page (everything not under ``/v1/``) pass untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from api.middleware import header, send_error
from service.db import repo
from service.errors import Authentication, ServiceError

log = logging.getLogger("api.auth")

PRINCIPAL = "principal"
MISSING_KEY = "You didn't provide an API key. Send it as 'Authorization: Bearer sk-pt-...'."
INVALID_KEY = "Incorrect API key provided."


def requires_key(scope: Scope) -> bool:
    """Whether the request must carry an API key: every HTTP request under ``/v1/``."""
    return scope["type"] == "http" and scope.get("path", "").startswith("/v1/")


def bearer_token(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when absent or another scheme."""
    scheme, _, token = header(scope, b"authorization").strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class AuthMiddleware:
    """Resolves the caller's key for every ``/v1/`` request before the app runs (see the module)."""

    def __init__(self, app: ASGIApp, session_factory: Callable[[], Any]):
        self.app = app
        self.session_factory = session_factory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not requires_key(scope):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        try:
            if token is None:
                raise Authentication(MISSING_KEY, code="missing_api_key")
            principal = await anyio.to_thread.run_sync(self._authenticate, token)
            if principal is None:
                raise Authentication(INVALID_KEY)
        except Exception as exc:  # noqa: BLE001 - every failure is answered in the envelope, nothing read
            from api.errors import to_service_error

            error: ServiceError = to_service_error(exc)
            if error.status_code == 500:
                log.exception("authentication failed unexpectedly on %s", scope.get("path"), exc_info=exc)
            await send_error(send, error, scope)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    def _authenticate(self, token: str) -> repo.Principal | None:
        session = self.session_factory()
        try:
            return repo.authenticate(session, token)
        finally:
            session.close()
