"""The one way the service opens Redis: timeouts that fit the blocking calls it makes, and keepalive.

redis-py reads with a 5 s socket timeout unless told otherwise, so a step that waits longer than
that for its worker (a worker still loading its model, a long step) would fail as "Redis is
unavailable". Every client is therefore built here with a read timeout longer than the longest
BLPOP it serves.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_S = 5.0
MARGIN_S = 10.0  # on top of the longest blocking wait


def redis_client(url: str, *, longest_wait_s: float) -> Any:
    """A Redis client for ``url`` whose reads outlast a blocking call of ``longest_wait_s`` seconds."""
    import redis

    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": float(longest_wait_s) + MARGIN_S,
        "health_check_interval": 30,
    }
    if not url.startswith("unix://"):  # TCP keepalive; a unix socket (the embedded Redis) has none
        options["socket_keepalive"] = True
    return redis.Redis.from_url(url, **options)
