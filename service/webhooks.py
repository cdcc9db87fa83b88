"""Signed job-end webhooks (Standard Webhooks, https://www.standardwebhooks.com) and their delivery.

Each event is one POST of OpenAI's webhook event shape::

    {"id": "msg_...", "object": "event", "type": "fine_tuning.job.succeeded", "created_at": 1700000000,
     "data": {"id": "ftjob-..."}}

with the headers ``webhook-id`` (the event id, stable across retries), ``webhook-timestamp`` (unix
seconds of this attempt) and ``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``
where ``key`` is the base64-decoded part of the endpoint's ``whsec_`` secret. Receivers check it with
:func:`verify` (or any Standard Webhooks library).

Delivery is an outbox (``service.db.repo.webhooks``): :func:`dispatch_once` records a delivery row for
every job that ended after an endpoint was registered, then sends the due rows one by one, each taken
with a conditional ``UPDATE`` so concurrent dispatchers (several gateways) never send a row twice at
once. A 2xx answer marks it delivered; anything else, a timeout (``settings.webhook_timeout_s``) or a
connection error schedules a retry after :func:`backoff_s` until ``settings.webhook_max_attempts``
attempts, then ``failed_at``. Receivers must deduplicate on ``webhook-id`` (delivery is at least once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from service import metrics
from service.db.repo import webhooks as repo
from service.db.session import session_scope
from service.settings import Settings

log = logging.getLogger("service.webhooks")

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
#: a signature older or newer than this (seconds) is refused by :func:`verify`
TOLERANCE_S = 5 * 60
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 6 * 3600.0
#: deliveries sent per dispatcher pass at most (the rest wait for the next pass)
MAX_SENDS_PER_PASS = 100
USER_AGENT = "PrivTune-Webhooks/1"


class WebhookVerificationError(Exception):
    """The signature, its timestamp or its headers do not check out."""


def new_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with 'whsec_'")
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()


def headers_for(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers (plus the content type) of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None, tolerance_s: int = TOLERANCE_S
) -> dict[str, Any]:
    """Check a received webhook: the headers are present, the timestamp is within ``tolerance_s`` of
    ``now``, and one of the space-separated ``v1,`` signatures matches (constant-time compare).
    Returns the parsed body; raises :class:`WebhookVerificationError` otherwise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, timestamp, signatures = (lowered[h] for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
        ts = int(timestamp)
    except (KeyError, ValueError) as exc:
        raise WebhookVerificationError("missing or malformed webhook headers") from exc
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise WebhookVerificationError("the webhook timestamp is too old or too new")
    expected = sign(secret, msg_id, ts, body).encode()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures.split()):
        raise WebhookVerificationError("no matching webhook signature")
    return json.loads(body)


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 5, 10, 20, ... capped at 6 hours."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def non_public_address(url: str) -> str | None:
    """The first address ``url``'s host resolves to that is not a public unicast address (loopback,
    private, link-local such as a cloud metadata service, multicast, reserved), or None when all are
    public. A host that does not resolve is reported too. Checked before every delivery, so a tenant's
    endpoint cannot be pointed at the provider's internal network (a DNS answer that changes between
    this check and the connection is not covered)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return f"{host} (does not resolve)"
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            return str(address)
    return None


def _send(
    http_client: Any, delivery: dict[str, Any], timeout_s: float, now: float, allow_private: bool = False
) -> str | None:
    """POST one delivery; None when the endpoint answered 2xx, else what went wrong."""
    if not allow_private and (address := non_public_address(delivery["url"])) is not None:
        return f"refused: the endpoint's host resolves to a non-public address ({address})"
    body = json.dumps(delivery["payload"], separators=(",", ":")).encode()
    headers = headers_for(delivery["secret"], delivery["id"], int(now), body)
    try:
        response = http_client.post(delivery["url"], content=body, headers=headers, timeout=timeout_s)
    except Exception as exc:  # httpx.TimeoutException, ConnectError, ...: retried like a 5xx
        return f"{type(exc).__name__}: {exc}"[:500]
    return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"


def dispatch_once(
    session_factory: sessionmaker[Session], settings: Settings, http_client: Any, now: float | None = None
) -> dict[str, int]:
    """One dispatcher pass: record the deliveries of newly ended jobs, then send what is due (at most
    :data:`MAX_SENDS_PER_PASS`) through ``http_client`` (an ``httpx.Client``). ``now`` (unix seconds)
    defaults to the current time. Returns counts ``{"enqueued", "delivered", "retry", "failed"}``."""
    clock = time.time() if now is None else now
    counts = {"enqueued": 0, "delivered": 0, "retry": 0, "failed": 0}
    with session_scope(session_factory) as session:
        counts["enqueued"] = repo.enqueue_job_end_deliveries(session, clock)
    lease_s = settings.webhook_timeout_s + 30.0
    for _ in range(MAX_SENDS_PER_PASS):
        at = clock if now is not None else time.time()
        with session_scope(session_factory) as session:  # the claim commits before the send
            delivery = repo.claim_delivery(session, at, lease_s)
        if delivery is None:
            break
        error = _send(http_client, delivery, settings.webhook_timeout_s, at, settings.webhook_allow_private_networks)
        attempts = delivery["attempts"] + 1
        if error is None:
            outcome, retry_at = "delivered", None
        elif attempts >= settings.webhook_max_attempts:
            outcome, retry_at = "failed", None
            log.warning(
                "webhook %s to %s given up after %d attempts: %s", delivery["id"], delivery["url"], attempts, error
            )
        else:
            outcome, retry_at = "retry", at + backoff_s(attempts)
        with session_scope(session_factory) as session:
            repo.record_attempt(
                session, delivery["id"], now=at, delivered=error is None, error=error, retry_at=retry_at
            )
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        counts[outcome] += 1
    return counts
