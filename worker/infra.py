"""Which worker errors are infrastructure faults, and retrying them with capped, jittered backoff.

An infrastructure fault (Redis or the database unreachable or timing out, the broker down, the
checkpoint disk full or failing) says nothing about the job: the runner retries the operation and,
if the fault outlasts its budget, gives the job back to the queue instead of failing it. Anything
else is a bug or bad input and ends the job.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc

T = TypeVar("T")

INFRA_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # TimeoutError of redis-py is separate from it
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    kombu.exceptions.OperationalError,
)
#: OSError numbers of a disk that cannot take a checkpoint (full, over quota, failing, read-only).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})


class InfraUnavailable(Exception):
    """An infrastructure fault outlasted its retry budget; ``__cause__`` is the last error."""


def is_disk_fault(exc: BaseException) -> bool:
    """True for an ``OSError`` of a full, failing or read-only disk."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def is_redis_fault(exc: BaseException) -> bool:
    """True for a Redis connection or timeout error (the database and the disk may still be fine)."""
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def is_infra(exc: BaseException) -> bool:
    """True when ``exc`` is an infrastructure fault worth retrying (see the module docstring)."""
    if isinstance(exc, InfraUnavailable):
        return True
    return isinstance(exc, INFRA_ERRORS) or is_disk_fault(exc)


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits a uniform time in
    ``[0, min(cap_s, base_s * 2**n)]``. ``sleep``, ``clock`` and ``rng`` are injected for tests."""

    base_s: float = 0.2
    cap_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        return self.rng.uniform(0.0, min(self.cap_s, self.base_s * 2.0**attempt))

    def call(
        self, fn: Callable[[], T], budget_s: float, on_retry: Callable[[BaseException, int], None] | None = None
    ) -> T:
        """``fn()``, retried on infrastructure faults for at most ``budget_s`` seconds; any other error
        propagates at once. Raises :class:`InfraUnavailable` (from the last fault) when the budget is
        spent; ``on_retry(exc, attempt)`` is told of each retry."""
        deadline = self.clock() + max(budget_s, 0.0)
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_infra(exc) or isinstance(exc, InfraUnavailable):
                    raise
                wait = self.delay(attempt)
                if self.clock() + wait > deadline:
                    raise InfraUnavailable(f"gave up after {attempt + 1} tries: {type(exc).__name__}") from exc
                if on_retry is not None:
                    on_retry(exc, attempt)
                self.sleep(wait)
                attempt += 1
