"""Per-key limits before work: a request-rate token bucket and an in-flight cap per API key, both in
Redis (one Lua script, atomic, on Redis' own clock, so every gateway replica shares them), and the
organization's cap on active jobs.

- Rate: ``settings.rate_limit_requests_per_minute`` tokens, refilled continuously (0: no limit).
- Concurrency: ``settings.max_concurrent_requests_per_key`` requests in flight (0: no limit). Each
  request is a member of a sorted set scored by its start; it is removed when the response is done
  (in a ``finally``), and members older than ``settings.redis_key_ttl_s`` are dropped, so a gateway
  that crashed mid-request leaks nothing past that lease. Both keys expire on their own.
- A refusal is 429 in OpenAI's shape (type ``requests``, code ``rate_limit_exceeded``, ``Retry-After``
  and ``retry-after-ms``), counted in ``service.metrics.RATE_LIMITED``. Every authenticated response
  carries ``x-ratelimit-limit-requests``, ``x-ratelimit-remaining-requests`` and
  ``x-ratelimit-reset-requests`` (a duration as OpenAI writes it: ``"1.2s"``, ``"6m0s"``).
- Redis down: the limiter fails open (the request goes through without limits or headers) so an
  outage of the limiter never takes the API down; it logs once per outage and tries Redis again
  after :data:`RETRY_AFTER_OUTAGE_S`.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import PRINCIPAL
from api.middleware import send_error
from service.db.models import Job
from service.db.repo import status as st
from service.errors import RateLimited
from service.metrics import RATE_LIMITED
from service.settings import Settings

log = logging.getLogger("api.limits")

PREFIX = "pt:limit:"
RETRY_AFTER_OUTAGE_S = 5.0
REDIS_TIMEOUT_S = 1.0

# KEYS: bucket hash, in-flight zset. ARGV: per-minute rate, max in flight, request id, lease ms.
# Returns {verdict (1 ok, 0 rate, -1 concurrency), tokens left, retry-after ms, ms to a full bucket}.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, maxc, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local tokens, reset = 0, 0
if rpm > 0 then
  local rate = rpm / 60000.0
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  tokens = tonumber(b[1]) or rpm
  local ts = tonumber(b[2]) or now
  tokens = math.min(rpm, tokens + math.max(0, now - ts) * rate)
  if tokens < 1 then
    return {0, 0, math.ceil((1 - tokens) / rate), math.ceil((rpm - tokens) / rate)}
  end
  tokens = tokens - 1
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], 61000)
  reset = math.ceil((rpm - tokens) / rate)
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - lease)
  if redis.call('ZCARD', KEYS[2]) >= maxc then
    return {-1, math.floor(tokens), 1000, reset}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], lease)
end
return {1, math.floor(tokens), 0, reset}
"""


def duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: ``"20ms"``, ``"1.2s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(frozen=True)
class Admission:
    """The limiter's verdict on one request; ``token`` releases its in-flight slot."""

    allowed: bool
    reason: str | None = None
    remaining: int = 0
    retry_after_s: float = 0.0
    reset_s: float = 0.0
    token: str | None = None
    counted: bool = False  # False when Redis was not consulted (limits off, or failing open)


class KeyLimiter:
    """The per-key limits of one gateway (see the module), on its own async Redis client built
    lazily on the event loop that uses it, with short timeouts and no retries (a slow limiter must
    not slow every request); close it with :meth:`aclose`."""

    def __init__(self, settings: Settings, redis: Any = None, prefix: str = PREFIX):
        self.rate = settings.rate_limit_requests_per_minute
        self.max_in_flight = settings.max_concurrent_requests_per_key
        self.lease_ms = settings.redis_key_ttl_s * 1000
        self.url, self.prefix, self._redis = settings.redis_url, prefix, redis
        self._script: Any = None
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0 or self.max_in_flight > 0

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(
                self.url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
            )
        if self._script is None:
            self._script = self._redis.register_script(_SCRIPT)
        return self._redis

    def _keys(self, key_id: str) -> list[str]:
        return [f"{self.prefix}{{{key_id}}}:bucket", f"{self.prefix}{{{key_id}}}:inflight"]

    async def admit(self, key_id: str) -> Admission:
        """Take a token and an in-flight slot for ``key_id``, or say which limit refuses it."""
        if not self.enabled or time.monotonic() < self._down_until:
            return Admission(True)
        token = uuid.uuid4().hex
        try:
            self._client()
            verdict, left, retry_ms, reset_ms = await self._script(
                keys=self._keys(key_id), args=[self.rate, self.max_in_flight, token, self.lease_ms]
            )
        except Exception as exc:  # noqa: BLE001 - any Redis failure: fail open
            self._outage(exc)
            return Admission(True)
        self._recovered()
        reason = {1: None, 0: "requests", -1: "concurrency"}[int(verdict)]
        held = token if reason is None and self.max_in_flight > 0 else None
        return Admission(
            reason is None, reason, int(left), int(retry_ms) / 1000, int(reset_ms) / 1000, held, self.rate > 0
        )

    async def release(self, key_id: str, token: str | None) -> None:
        """Free the in-flight slot of an admitted request (a failure only logs; the lease expires it)."""
        if token is None:
            return
        try:
            await self._client().zrem(self._keys(key_id)[1], token)
        except Exception as exc:  # noqa: BLE001
            self._outage(exc)

    def _outage(self, exc: Exception) -> None:
        if self._down_until == 0.0:
            log.warning("rate limiter: Redis unavailable (%s); requests pass unlimited", exc.__class__.__name__)
        self._down_until = time.monotonic() + RETRY_AFTER_OUTAGE_S

    def _recovered(self) -> None:
        if self._down_until:
            log.warning("rate limiter: Redis is back; limits apply again")
            self._down_until = 0.0

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis, self._script = None, None


def rate_headers(limit: int, admission: Admission) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*-requests`` headers for an admission that consulted the bucket."""
    if not admission.counted:
        return []
    values = {"limit": str(limit), "remaining": str(admission.remaining), "reset": duration(admission.reset_s)}
    return [(f"x-ratelimit-{name}-requests".encode(), value.encode()) for name, value in values.items()]


def refusal(admission: Admission, limiter: KeyLimiter) -> RateLimited:
    """The 429 of a refused admission."""
    if admission.reason == "concurrency":
        message = f"Too many requests in flight for this API key (at most {limiter.max_in_flight} at once)."
    else:
        message = f"Rate limit reached for requests: {limiter.rate} per minute for this API key."
    return RateLimited(message, retry_after_s=admission.retry_after_s, reason=admission.reason or "requests")


class LimitMiddleware:
    """Applies a :class:`KeyLimiter` to every authenticated request (add it inside ``api.auth``)."""

    def __init__(self, app: ASGIApp, limiter: KeyLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get(PRINCIPAL) if scope["type"] == "http" else None
        if principal is None:
            await self.app(scope, receive, send)
            return
        admission = await self.limiter.admit(principal.key_id)
        headers = rate_headers(self.limiter.rate, admission)
        if not admission.allowed:
            RATE_LIMITED.labels(reason=admission.reason).inc()
            error = refusal(admission, self.limiter)
            error.headers.update({k.decode(): v.decode() for k, v in headers})
            await send_error(send, error, scope)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and headers:
                message["headers"] = [*message.get("headers", []), *headers]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            with anyio.CancelScope(shield=True):
                await self.limiter.release(principal.key_id, admission.token)


def check_active_jobs(session: Session, organization_id: str, settings: Settings) -> None:
    """Raise 429 (code ``too_many_active_jobs``) when ``organization_id`` already has
    ``settings.max_active_jobs_per_org`` queued or running jobs (0: no cap). Call it before creating one."""
    cap = settings.max_active_jobs_per_org
    if cap <= 0:
        return
    active = session.scalar(
        select(func.count()).where(Job.organization_id == organization_id, Job.status.in_([st.QUEUED, st.RUNNING]))
    )
    if (active or 0) >= cap:
        RATE_LIMITED.labels(reason="active_jobs").inc()
        raise RateLimited(
            f"Your organization has {active} queued or running jobs; the limit is {cap}. "
            "Wait for one to finish or cancel one, then retry.",
            retry_after_s=60,
            reason="active_jobs",
            code="too_many_active_jobs",
            headers={"x-should-retry": "false"},
        )
