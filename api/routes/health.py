"""Liveness and readiness probes (no authentication).

``/readyz`` checks, concurrently and each within ``PROBE_TIMEOUT_S`` (about 2 s), in the app's own
probe threads (never the request thread pool):

- ``database``: ``SELECT 1`` through the app's engine;
- ``redis``: ``PING`` on the step channel's Redis;
- ``broker``: a Celery broker connection (kombu, the same Redis URL as Celery uses) that answers.

200 ``{"status": "ok", "checks": {"database": "ok", "redis": "ok", "broker": "ok"}}`` when all pass;
otherwise 503 in the OpenAI error envelope, code ``not_ready``, naming what failed in the message and
carrying the same ``checks`` (each ``"ok"`` or ``"unavailable"``) in ``error.checks``, with
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import text

from api.observability import PROBE_TIMEOUT_S, db_probe_timeout, probe_redis, run_probe
from service.errors import ServiceUnavailable
from service.queue import celery_url

router = APIRouter(tags=["health"])
log = logging.getLogger("api.health")

OK, UNAVAILABLE = "ok", "unavailable"


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def check_database(app: Any) -> None:
    """``SELECT 1`` through the app's session factory (raises when the database does not answer)."""
    session = app.state.session_factory()
    try:
        db_probe_timeout(session)
        session.execute(text("SELECT 1"))
    finally:
        session.close()


def check_redis(app: Any) -> None:
    """``PING`` on the app's probe Redis client (short timeouts)."""
    if not probe_redis(app).ping():
        raise ConnectionError("Redis did not answer PING")


def check_broker(app: Any) -> None:
    """Open a Celery broker connection to ``settings.redis_url`` (kombu) and make its transport answer:
    for Redis, a ``PING`` on the channel's own client."""
    from kombu import Connection

    url = celery_url(app.state.settings.redis_url)
    options = {"socket_timeout": PROBE_TIMEOUT_S, "socket_connect_timeout": PROBE_TIMEOUT_S}
    with Connection(url, connect_timeout=PROBE_TIMEOUT_S, transport_options=options) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=PROBE_TIMEOUT_S)
        client = getattr(conn.default_channel, "client", None)
        if client is not None and not client.ping():
            raise ConnectionError("the broker did not answer PING")


CHECKS = {"database": check_database, "redis": check_redis, "broker": check_broker}


async def _check(app: Any, name: str) -> str:
    try:
        await run_probe(app, CHECKS[name], app)
        return OK
    except Exception as exc:  # any failure or a timeout: not ready
        log.warning("readiness check %s failed: %r", name, exc)
        return UNAVAILABLE


@router.get("/readyz", summary="Readiness (database, Redis and the broker answer)")
async def readyz(request: Request) -> Any:
    """200 when the database, Redis and the broker all answer within the probe timeout; 503
    ``not_ready`` naming the failed checks otherwise."""
    results = await asyncio.gather(*(_check(request.app, name) for name in CHECKS))
    checks = dict(zip(CHECKS, results, strict=True))
    failed = [name for name, result in checks.items() if result != OK]
    if failed:
        raise ServiceUnavailable(
            f"The service is not ready: {', '.join(failed)} unavailable.", code="not_ready", extra={"checks": checks}
        )
    return {"status": "ok", "checks": checks}
