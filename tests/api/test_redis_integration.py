"""The gateway with a real Redis: the step relay to a worker-side channel and the export guard."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient

from api import deps
from api.main import create_app
from service.db import repo
from service.db.session import session_scope
from service.errors import StepRejected
from service.relay import WorkerChannel
from tests.api.conftest import FakeEnqueuer, job_body, step_payload

REDIS_URL = "redis://127.0.0.1:6379/0"

pytestmark = pytest.mark.integration


@pytest.fixture
def live(settings):
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc.__class__.__name__}")
    app = create_app(settings.model_copy(update={"redis_url": REDIS_URL, "step_timeout_s": 5}))
    enqueuer = FakeEnqueuer()
    app.dependency_overrides[deps.get_enqueuer] = lambda: enqueuer
    with session_scope(app.state.session_factory) as s:
        key, _ = repo.create_api_key(s, "acme")
    with TestClient(app) as http:
        yield app, http, {"Authorization": f"Bearer {key}"}, client, enqueuer
    client.close()


def test_step_round_trip_through_redis(live):
    app, http, headers, client, _ = live
    job_id = http.post("/v1/fine_tuning/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(app.state.session_factory) as s:
        repo.claim_job(s, job_id, "w1", 60)
    channel = WorkerChannel(client, job_id)
    seen = []

    def worker():
        message = channel.receive(timeout_s=5)
        seen.append(message.payload)
        channel.reply(message.request_id, b"top-output")

    thread = threading.Thread(target=worker)
    thread.start()
    body = step_payload(job_id)
    r = http.post(f"/v1/fine_tuning/jobs/{job_id}/steps", content=body, headers=headers)
    thread.join()
    assert r.status_code == 200 and r.content == b"top-output" and seen == [body]

    def rejecting_worker():
        message = channel.receive(timeout_s=5)
        rejection = StepRejected(409, "step_out_of_order", "resend step 1", param="step", expected_step=1)
        channel.reject(message.request_id, rejection)

    thread = threading.Thread(target=rejecting_worker)
    thread.start()
    r = http.post(f"/v1/fine_tuning/jobs/{job_id}/steps", content=step_payload(job_id, step=5), headers=headers)
    thread.join()
    assert r.status_code == 409 and r.headers["x-should-retry"] == "false" and r.headers["x-expected-step"] == "1"
    assert (
        r.json()["error"]["expected_step"] == 1
        and r.json()["error"]["param"] == "step"
        and r.json()["error"]["code"] == "step_out_of_order"
    )
    channel.discard_pending()


def test_a_tail_export_is_enqueued_once_under_its_own_guard(live):
    _, http, headers, client, enqueuer = live
    guards = ("pt:export:smollm2-135m:l3-t2", "pt:export:smollm2-135m:l3")
    client.delete(*guards)
    try:
        for _ in range(3):
            r = http.get("/v1/privtune/bottoms/smollm2-135m/3", params={"tail_layers": 2}, headers=headers)
            assert r.status_code == 503 and r.json()["error"]["code"] == "bottom_model_preparing"
        assert (
            enqueuer.exports == [("smollm2-135m", 3, 2)] and client.exists(guards[0]) and not client.exists(guards[1])
        )
        assert http.get("/v1/privtune/bottoms/smollm2-135m/3", headers=headers).status_code == 503  # no tail: another
        assert enqueuer.exports == [("smollm2-135m", 3, 2), ("smollm2-135m", 3, 0)]
    finally:
        client.delete(*guards)


def test_export_is_enqueued_once(live):
    _, http, headers, client, enqueuer = live
    client.delete("pt:export:minilm-l6:l4")
    try:
        for _ in range(3):
            assert http.get("/v1/privtune/bottoms/minilm-l6/4", headers=headers).status_code == 503
        assert enqueuer.exports == [("minilm-l6", 4, 0)]
    finally:
        client.delete("pt:export:minilm-l6:l4")


def test_a_failed_export_is_answered_from_the_workers_error_key(live):
    _, http, headers, client, enqueuer = live
    guard, error_key = "pt:export:minilm-l6:l5", "pt:export:error:minilm-l6:l5"  # worker.tasks writes these
    client.delete(guard)
    error = {"code": "bottom_export_failed", "message": "The model package of minilm-l6 is not installed."}
    client.set(error_key, json.dumps(error), ex=60)
    try:
        r = http.get("/v1/privtune/bottoms/minilm-l6/5", headers=headers)
        assert r.status_code == 500 and r.headers["x-should-retry"] == "false"
        assert r.json()["error"]["code"] == "bottom_export_failed" and r.json()["error"]["message"] == error["message"]
        assert enqueuer.exports == [] and not client.exists(guard)
        client.delete(error_key)  # the error expired: the next request exports again
        assert http.get("/v1/privtune/bottoms/minilm-l6/5", headers=headers).status_code == 503
        assert enqueuer.exports == [("minilm-l6", 5, 0)]
    finally:
        client.delete(guard, error_key)


def test_a_step_nobody_serves_leaves_only_an_expiring_list(live):
    app, http, headers, client, _ = live
    job_id = http.post("/v1/fine_tuning/jobs", json=job_body(), headers=headers).json()["id"]
    with session_scope(app.state.session_factory) as s:
        repo.claim_job(s, job_id, "w1", 60)
    r = http.post(f"/v1/fine_tuning/jobs/{job_id}/steps", content=step_payload(job_id), headers=headers)
    assert r.status_code == 503 and r.json()["error"]["code"] == "step_timeout"
    key = f"pt:job:{job_id}:steps"
    assert client.llen(key) == 1 and 0 < client.ttl(key) <= app.state.settings.redis_key_ttl_s
    client.delete(key)
