"""Per-request observability: the request id in every log line, an access log line, HTTP metrics.

:class:`ObservabilityMiddleware` must run inside ``api.middleware.RequestContextMiddleware`` (add it
to the app first: Starlette's last-added middleware is the outermost) so the request id is already in
``scope["state"]``. Metrics are labelled with the route template (``/v1/fine_tuning/jobs/{fine_tuning_job_id}``),
never the raw path, so a scan of random URLs cannot explode the series count: a request that matched
no route is labelled ``unmatched``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import text
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.logging import request_id_var

T = TypeVar("T")
UNMATCHED = "unmatched"
access_log = logging.getLogger("api.access")


def route_template(scope: Scope) -> str:
    """The path template of the route that served ``scope`` (set by the router). A request answered
    before routing (401, 429, 413 from an outer middleware) is matched here against the templates of
    the app's OpenAPI document; one that matches none is ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    app = scope.get("app")
    method, raw = scope.get("method", ""), scope.get("path", "")
    for regex, methods, template in _templates(app) if app is not None else ():
        if method in methods and regex.match(raw):
            return template
    return UNMATCHED


def _templates(app: Any) -> list[tuple[re.Pattern[str], frozenset[str], str]]:
    table = getattr(app.state, "route_templates", None)
    if table is None:
        paths = app.openapi().get("paths", {}) if hasattr(app, "openapi") else {}
        table = [
            (compile_path(template)[0], frozenset(m.upper() for m in operations), template)
            for template, operations in paths.items()
        ]
        app.state.route_templates = table
    return table


class ObservabilityMiddleware:
    """Binds :data:`service.logging.request_id_var` for the request, counts it in
    ``privtune_http_requests_total{method,route,status}`` and times it in
    ``privtune_http_request_seconds{method,route}`` (to the response start), and writes one
    ``api.access`` line with method, route, status and duration_ms. An exception escaping the app is
    counted and logged as status 500, then re-raised for Starlette's error middleware to render."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = request_id_var.set(scope.get("state", {}).get("request_id"))
        start = time.perf_counter()
        status = 500
        started: float | None = None

        async def send_timed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_timed)
        except BaseException:
            status = 500
            raise
        finally:
            self._record(scope, status, start, started)
            request_id_var.reset(token)

    @staticmethod
    def _record(scope: Scope, status: int, start: float, started: float | None) -> None:
        method, route = scope.get("method", ""), route_template(scope)
        elapsed = (started if started is not None else time.perf_counter()) - start
        metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
        metrics.HTTP_SECONDS.labels(method, route).observe(elapsed)
        level = logging.ERROR if status >= 500 else logging.INFO
        access_log.log(
            level,
            "%s %s %d",
            method,
            route,
            status,
            extra={"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
        )


# ---- probes: short-timeout access to the database and Redis for /readyz and /metrics ---------------

#: Seconds one probe (a readiness check, a scrape's gauge) may take before it counts as failed.
PROBE_TIMEOUT_S = 2.0
PROBE_THREADS = 4


def probe_redis(app: Any) -> Any:
    """The app's probe Redis client (created on first use): connect and read timeouts of
    :data:`PROBE_TIMEOUT_S`, unlike the step client, whose reads outlast a BLPOP."""
    state = app.state
    if getattr(state, "probe_redis", None) is None:
        import redis

        state.probe_redis = redis.Redis.from_url(
            state.settings.redis_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
        )
    return state.probe_redis


def _probe_executor(app: Any) -> ThreadPoolExecutor:
    state = app.state
    if getattr(state, "probe_executor", None) is None:
        state.probe_executor = ThreadPoolExecutor(max_workers=PROBE_THREADS, thread_name_prefix="privtune-probe")
    return state.probe_executor


async def run_probe(app: Any, fn: Callable[..., T], *args: Any, timeout_s: float = PROBE_TIMEOUT_S) -> T:
    """``fn(*args)`` in the app's own small probe thread pool (never the request thread pool, which a
    step holds for up to ``step_timeout_s``), abandoned after ``timeout_s`` with :class:`TimeoutError`.
    An abandoned call finishes in its thread; when every probe thread is stuck, later probes time out
    too, so a probe answers within ``timeout_s`` whatever hangs."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(_probe_executor(app), fn, *args), timeout_s)


def close_probes(app: Any) -> None:
    """Release the probe Redis client and thread pool (the lifespan's end)."""
    state = app.state
    client, executor = getattr(state, "probe_redis", None), getattr(state, "probe_executor", None)
    state.probe_redis = state.probe_executor = None
    if client is not None:
        client.close()
    if executor is not None:
        executor.shutdown(wait=False, cancel_futures=True)


def db_probe_timeout(session: Any, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """On PostgreSQL, bound the statements of ``session``'s transaction to ``timeout_s`` (server-side)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}"))
