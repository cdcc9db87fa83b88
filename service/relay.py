"""The per-job step channel between gateway replicas and the job's worker, in Redis (torch-free).

Keys (``J`` = job id, ``R`` = a request id chosen by the gateway):

    pt:job:J:steps   list   gateway RPUSHes ``R (32 bytes) + payload`` (and renews the list's expiry,
                            ``key_ttl_s``, in the same pipeline); the worker BLPOPs
    pt:reply:R       list   the worker LPUSHes ``status byte + body`` and sets a short TTL;
                            the gateway that sent R BLPOPs it

A reply's first byte is ``0`` for a wire payload (the step's output) or ``1`` for a rejection: a
:class:`service.errors.StepRejected` as JSON (``{"status", "code", "message", "param",
"expected_step"}``). Replies go to a per-request list, so a rejection is never mistaken for the
answer to a later, valid request. Idempotency lives in the
worker: it remembers the reply to the last step it served and sends it again for a retried step.

The gateway side (:class:`StepRelay`) runs on ``redis.asyncio``: a step waiting for its worker holds
no thread. The worker side (:class:`WorkerChannel`) is blocking.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from service.errors import StepRejected, StepTimeout

REQUEST_ID_BYTES = 32
REPLY_OK = b"\x00"
REPLY_REJECTED = b"\x01"
REPLY_TTL_S = 120
DEFAULT_KEY_TTL_S = 3600


def steps_key(job_id: str) -> str:
    return f"pt:job:{job_id}:steps"


def reply_key(request_id: str) -> str:
    return f"pt:reply:{request_id}"


@dataclass(frozen=True)
class StepMessage:
    """One step request as the worker sees it."""

    request_id: str
    payload: bytes

    @classmethod
    def parse(cls, raw: bytes) -> StepMessage:
        return cls(raw[:REQUEST_ID_BYTES].decode("ascii"), raw[REQUEST_ID_BYTES:])


class StepRelay:
    """Gateway side: hand a step to the job's worker and wait for its reply, on an async Redis client
    (``service.redis_client.async_redis_client``). Every list it pushes to expires ``key_ttl_s`` after
    its last push, so a job or worker that is gone leaks nothing."""

    def __init__(self, redis_client: Any, key_ttl_s: int = DEFAULT_KEY_TTL_S):
        self.redis = redis_client
        self.key_ttl_s = int(key_ttl_s)

    async def submit(self, job_id: str, step: int, payload: bytes, timeout_s: float) -> bytes:
        """Queue ``payload`` for the job's worker and return the worker's reply bytes.

        Raises :class:`StepRejected` when the worker refuses the step and :class:`StepTimeout` when no
        reply arrives in ``timeout_s``. ``step`` is informational (the payload header is authoritative).
        """
        return await self.request(steps_key(job_id), payload, timeout_s, f"step {step} of job {job_id}")

    async def request(self, key: str, payload: bytes, timeout_s: float, what: str = "the request") -> bytes:
        """Queue ``payload`` on the list ``key`` (a worker's channel) and wait for its reply (see :meth:`submit`)."""
        request_id = uuid.uuid4().hex
        await push_expiring(self.redis, key, request_id.encode("ascii") + payload, self.key_ttl_s)
        popped = await self.redis.blpop([reply_key(request_id)], timeout=max(1, int(round(timeout_s))))
        if popped is None:
            raise StepTimeout(f"no reply for {what} within {timeout_s:.0f} s")
        body = popped[1]
        if body[:1] == REPLY_OK:
            return bytes(body[1:])
        raise StepRejected.from_json(bytes(body[1:]))


async def push_expiring(redis: Any, key: str, value: bytes, ttl_s: int) -> None:
    """RPUSH ``value`` onto ``key`` and set the list to expire ``ttl_s`` seconds later (one pipeline)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.rpush(key, value)
        pipe.expire(key, int(ttl_s))
        await pipe.execute()


class WorkerChannel:
    """Worker side: receive a job's step requests and answer them."""

    def __init__(self, redis_client: Any, job_id: str, keys: list[str] | None = None):
        self.redis = redis_client
        self.job_id = job_id
        self.keys = keys or [steps_key(job_id)]  # the lists served, in priority order

    def receive(self, timeout_s: float = 1.0) -> StepMessage | None:
        """Block up to ``timeout_s`` for the next request on any of the channel's lists; None when none arrived."""
        popped = self.redis.blpop(self.keys, timeout=timeout_s)
        return None if popped is None else StepMessage.parse(popped[1])

    def reply(self, request_id: str, payload: bytes) -> None:
        self._push(request_id, REPLY_OK + payload)

    def reject(self, request_id: str, rejection: StepRejected) -> None:
        """Answer ``request_id`` with ``rejection`` (the gateway raises it again, same fields)."""
        self._push(request_id, REPLY_REJECTED + rejection.to_json())

    def _push(self, request_id: str, body: bytes) -> None:
        key = reply_key(request_id)
        pipe = self.redis.pipeline()
        pipe.lpush(key, body)
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()

    def discard_pending(self) -> None:
        """Drop queued requests (the job ended; their senders time out or see the job's status)."""
        self.redis.delete(*self.keys)
