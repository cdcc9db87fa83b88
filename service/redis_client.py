"""The one way the service opens Redis: timeouts that fit the blocking calls it makes, keepalive, and
a retry policy (exponential backoff on connection errors and timeouts).

redis-py reads with a 5 s socket timeout unless told otherwise, so a step that waits longer than
that for its worker (a worker still loading its model, a long step) would fail as "Redis is
unavailable". Every client is therefore built here with a read timeout longer than the longest
BLPOP it serves. :func:`redis_client` is the blocking client (workers, short gateway commands);
:func:`async_redis_client` is the gateway's ``redis.asyncio`` client, so a waiting step holds no thread.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_S = 5.0
MARGIN_S = 10.0  # on top of the longest blocking wait
RETRIES = 3
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 1.0


def _options(url: str, longest_wait_s: float, retry: Any, retries: int) -> dict[str, Any]:
    from redis.exceptions import ConnectionError, TimeoutError

    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": float(longest_wait_s) + MARGIN_S,
        "health_check_interval": 30,
    }
    if retries > 0:
        options["retry"] = retry
        options["retry_on_error"] = [ConnectionError, TimeoutError]
    if not url.startswith("unix://"):  # TCP keepalive; a unix socket (the embedded Redis) has none
        options["socket_keepalive"] = True
    return options


def redis_client(url: str, *, longest_wait_s: float, retries: int = RETRIES) -> Any:
    """A blocking Redis client for ``url`` whose reads outlast a blocking call of ``longest_wait_s``
    seconds; a command failing on a connection error or timeout is retried ``retries`` times."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retry = Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries)
    return redis.Redis.from_url(url, **_options(url, longest_wait_s, retry, retries))


def async_redis_client(url: str, *, longest_wait_s: float, retries: int = RETRIES) -> Any:
    """The ``redis.asyncio`` twin of :func:`redis_client` (same timeouts, keepalive and retries). Build
    it on the event loop that uses it and close it there (``await client.aclose()``)."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    retry = Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries)
    return redis.asyncio.Redis.from_url(url, **_options(url, longest_wait_s, retry, retries))
