"""Per-key limits (api.limits) against the real Redis at 127.0.0.1:6379 (database 12): the token
bucket and the in-flight cap are atomic under concurrency, refusals are OpenAI's 429, every
authenticated response carries the x-ratelimit headers, a Redis outage fails open, and the active-jobs cap."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from api.limits import KeyLimiter, check_active_jobs, duration
from api.main import create_app
from service.db import repo
from service.db.session import session_scope
from service.errors import RateLimited

REDIS_URL = "redis://127.0.0.1:6379/12"

pytestmark = pytest.mark.integration


@pytest.fixture
def live(settings):
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc.__class__.__name__}")
    yield settings.model_copy(update={"redis_url": REDIS_URL})
    client.close()


def _admit_all(settings, key_id: str, n: int, prefix: str):
    async def run():
        limiter = KeyLimiter(settings, prefix=prefix)
        try:
            return await asyncio.gather(*(limiter.admit(key_id) for _ in range(n)))
        finally:
            await limiter.aclose()

    return asyncio.run(run())


def _prefix() -> str:
    return f"pt:test-limit:{time.time_ns()}:"


def test_the_bucket_admits_exactly_its_size_under_concurrency(live):
    settings = live.model_copy(update={"rate_limit_requests_per_minute": 10, "max_concurrent_requests_per_key": 0})
    admissions = _admit_all(settings, "key-a", 40, _prefix())
    allowed = [a for a in admissions if a.allowed]
    assert len(allowed) == 10 and {a.reason for a in admissions if not a.allowed} == {"requests"}
    assert sorted(a.remaining for a in allowed) == list(range(10))
    assert all(5 < a.retry_after_s <= 6.1 for a in admissions if not a.allowed)  # one token per 6 s


def test_the_in_flight_cap_is_atomic_released_and_leased(live):
    settings = live.model_copy(
        update={"rate_limit_requests_per_minute": 0, "max_concurrent_requests_per_key": 5, "redis_key_ttl_s": 1}
    )
    prefix = _prefix()

    async def run():
        limiter = KeyLimiter(settings, prefix=prefix)
        try:
            first = await asyncio.gather(*(limiter.admit("key-b") for _ in range(30)))
            allowed = [a for a in first if a.allowed]
            assert len(allowed) == 5 and {a.reason for a in first if not a.allowed} == {"concurrency"}
            await limiter.release("key-b", allowed[0].token)
            assert (await limiter.admit("key-b")).allowed and not (await limiter.admit("key-b")).allowed
            await asyncio.sleep(1.1)  # a gateway that crashed mid-request: its slots lapse with the lease
            assert all([(await limiter.admit("key-b")).allowed for _ in range(5)])
        finally:
            await limiter.aclose()

    asyncio.run(run())


def _app(settings):
    app = create_app(settings)
    with session_scope(app.state.session_factory) as s:
        key, _ = repo.create_api_key(s, "acme")
    return app, {"Authorization": f"Bearer {key}"}


def test_a_refusal_is_openais_429_and_every_response_has_the_headers(live):
    app, headers = _app(live.model_copy(update={"rate_limit_requests_per_minute": 2}))
    before = REGISTRY.get_sample_value("privtune_rate_limited_total", {"reason": "requests"}) or 0
    with TestClient(app) as client:
        first, second, third = (client.get("/v1/models", headers=headers) for _ in range(3))
        assert client.get("/healthz").headers.get("x-ratelimit-limit-requests") is None
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert (first.headers["x-ratelimit-remaining-requests"], second.headers["x-ratelimit-remaining-requests"]) == (
        "1",
        "0",
    )
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert third.status_code == 429
    assert third.json()["error"] == {
        "message": "Rate limit reached for requests: 2 per minute for this API key.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert 25 <= int(third.headers["retry-after"]) <= 31 and int(third.headers["retry-after-ms"]) > 20000
    assert third.headers["x-request-id"] and third.headers["x-ratelimit-remaining-requests"] == "0"
    assert REGISTRY.get_sample_value("privtune_rate_limited_total", {"reason": "requests"}) == before + 1


def test_a_finished_request_frees_its_slot(live):
    app, headers = _app(live.model_copy(update={"max_concurrent_requests_per_key": 1}))
    with TestClient(app) as client:
        for _ in range(3):  # one at a time fits a cap of one: each response frees its slot
            assert client.get("/v1/models", headers=headers).status_code == 200


def test_redis_down_fails_open_and_logs_once(settings, caplog):
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "rate_limit_requests_per_minute": 1})

    async def run():
        limiter = KeyLimiter(down)
        try:
            return [await limiter.admit("key-c") for _ in range(5)]
        finally:
            await limiter.aclose()

    with caplog.at_level(logging.WARNING, logger="api.limits"):
        admissions = asyncio.run(run())
    assert all(a.allowed and not a.counted for a in admissions)
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_the_active_jobs_cap_is_a_429(settings):
    app = create_app(settings.model_copy(update={"max_active_jobs_per_org": 2}))
    capped = app.state.settings
    with session_scope(app.state.session_factory) as s:
        _, org = repo.create_api_key(s, "acme")
        for _ in range(2):
            check_active_jobs(s, org, capped)
            repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)
        with pytest.raises(RateLimited) as caught:
            check_active_jobs(s, org, capped)
        check_active_jobs(s, org, capped.model_copy(update={"max_active_jobs_per_org": 0}))  # 0: no cap
    error = caught.value
    assert (error.status_code, error.code, error.body()["error"]["type"]) == (429, "too_many_active_jobs", "requests")
    assert "the limit is 2" in error.message and error.headers["retry-after"]


def test_durations_are_written_as_openai_writes_them():
    assert [duration(s) for s in (0.02, 1.2, 6.0, 360, 75.5)] == ["20ms", "1.2s", "6s", "6m0s", "1m16s"]
