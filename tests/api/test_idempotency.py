"""Idempotency-Key on JSON POSTs: a retried create answers the first response and creates nothing."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api import deps
from api.idempotency import STALE_AFTER_S, _request_hash, install_idempotency, purge_idempotency_keys
from api.main import create_app
from service.db import repo
from service.db.base import now_s
from service.db.models import IdempotencyKey, Job
from service.db.repo import idempotency as store
from service.db.session import session_scope
from tests.api.conftest import FakeEnqueuer, FakeRedis, FakeRelay, job_body

JOBS = "/v1/fine_tuning/jobs"


class Env:
    def __init__(self, settings):
        self.app = create_app(settings)
        install_idempotency(self.app)
        install_idempotency(self.app)  # twice: still one middleware
        self.settings, self.enqueuer = settings, FakeEnqueuer()
        self.app.dependency_overrides[deps.get_enqueuer] = lambda: self.enqueuer
        self.app.dependency_overrides[deps.get_relay] = FakeRelay
        self.app.dependency_overrides[deps.get_redis] = FakeRedis
        with self.session() as s:
            self.key, self.org_id = repo.create_api_key(s, "acme")
            self.other_key, _ = repo.create_api_key(s, "globex")

    def session(self):
        return session_scope(self.app.state.session_factory)

    def post(self, body, key: str | None = "k-1", api_key: str | None = None, path: str = JOBS):
        headers = {"Authorization": f"Bearer {api_key or self.key}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return self.client.post(path, json=body, headers=headers)

    def jobs(self) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Job))


@pytest.fixture
def env(settings):
    e = Env(settings)
    with TestClient(e.app) as client:
        e.client = client
        yield e


def test_retry_with_the_same_key_replays_the_first_response_and_creates_nothing(env):
    first = env.post(job_body())
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    again = env.post(dict(reversed(list(job_body().items()))))  # same body, other key order
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert env.jobs() == 1 and env.enqueuer.jobs == [first.json()["id"]]
    assert env.post(job_body(), key="k-2").json()["id"] != first.json()["id"]  # a new key: a new job
    assert env.post(job_body(), key=None).status_code == 200  # no key: no idempotency
    assert env.jobs() == 3


def test_keys_are_per_organization(env):
    mine = env.post(job_body())
    theirs = env.post(job_body(), api_key=env.other_key)
    assert theirs.status_code == 200 and "idempotent-replayed" not in theirs.headers
    assert theirs.json()["id"] != mine.json()["id"] and env.jobs() == 2


def test_the_same_key_with_another_body_or_path_is_400(env):
    job = env.post(job_body()).json()
    for body, path in ((job_body(total_steps=11), JOBS), (job_body(), f"{JOBS}/{job['id']}/cancel")):
        r = env.post(body, path=path)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "idempotency_key_reused"
        assert r.json()["error"]["param"] == "Idempotency-Key"
    assert env.jobs() == 1
    with env.session() as s:
        assert repo.get_job(s, job["id"])["status"] == "queued"  # the cancel did not run


def test_a_retry_while_the_first_runs_is_409_retryable(env):
    with env.session() as s:
        claim = store.claim(
            s,
            organization_id=env.org_id,
            key="k-1",
            method="POST",
            path=JOBS,
            request_hash=_request_hash(b"", json.dumps(job_body()).encode()),
            ttl_s=env.settings.idempotency_ttl_s,
            stale_after_s=STALE_AFTER_S,
        )
    assert claim.outcome == "claimed"
    r = env.post(job_body())
    assert r.status_code == 409 and r.headers["x-should-retry"] == "true"
    assert r.json()["error"]["code"] == "idempotency_key_in_use" and env.jobs() == 0
    with env.session() as s:  # an unanswered claim of a request that died is taken over
        s.execute(IdempotencyKey.__table__.update().values(created_at=now_s() - STALE_AFTER_S - 1))
    assert env.post(job_body()).status_code == 200 and env.jobs() == 1


def test_5xx_is_not_stored_so_the_retry_runs(env):
    env.enqueuer.fail = True
    assert env.post(job_body()).status_code == 503
    env.enqueuer.fail = False
    r = env.post(job_body())
    assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert env.enqueuer.jobs == [r.json()["id"]]
    assert env.post(job_body()).headers["idempotent-replayed"] == "true"


def test_4xx_is_stored_and_replayed(env):
    bad = job_body(batch_size=0)
    first = env.post(bad)
    assert first.status_code == 400
    again = env.post(bad)
    assert again.status_code == 400 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


def test_invalid_key_header_is_400_and_unauthenticated_requests_pass_through(env):
    r = env.post(job_body(), key="x" * 257)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key"
    r = env.post(job_body(), api_key="sk-pt-000000000000-" + "x" * 43)
    assert r.status_code == 401 and env.jobs() == 0
    huge = {**job_body(), "suffix": "x" * (env.settings.request_body_limit + 1)}
    assert env.post(huge).status_code == 413  # over the body limit: the route's limit answers
    with env.session() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def test_entries_expire_after_the_ttl(env):
    first = env.post(job_body()).json()
    ttl = env.settings.idempotency_ttl_s
    factory = env.app.state.session_factory
    assert purge_idempotency_keys(factory, env.settings, now=now_s() + ttl - 5) == 0
    assert env.post(job_body()).json()["id"] == first["id"]
    with env.session() as s:  # expired but not yet purged: forgotten at the next use
        s.execute(IdempotencyKey.__table__.update().values(created_at=now_s() - ttl - 1))
    second = env.post(job_body())
    assert second.status_code == 200 and second.json()["id"] != first["id"]
    assert purge_idempotency_keys(factory, env.settings, now=now_s() + ttl + 1) == 1
    with env.session() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def test_a_principal_set_by_an_outer_middleware_is_used(settings):
    """With ``scope["state"]["principal"]`` set (the auth middleware), no second authentication."""
    e = Env(settings)
    org_id = e.org_id

    class Principal:
        organization_id = org_id

    class SetPrincipal:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                scope.setdefault("state", {})["principal"] = Principal()
            await self.app(scope, receive, send)

    e.app.add_middleware(SetPrincipal)  # outermost
    with TestClient(e.app) as client:
        e.client = client
        assert e.post(job_body()).status_code == 200
        assert e.post(job_body()).headers["idempotent-replayed"] == "true"
        assert e.jobs() == 1


def test_inside_the_request_context_middleware_replays_carry_a_request_id_and_limits_render(settings):
    """The order api/main.py uses: the request-context middleware outside, this one inside."""
    from starlette.middleware import Middleware

    from api.idempotency import IdempotencyMiddleware

    e = Env(settings)
    e.app.user_middleware.clear()
    e.app.user_middleware.extend(  # first = outermost
        [m for m in create_app(settings).user_middleware if m.cls is not IdempotencyMiddleware]
        + [Middleware(IdempotencyMiddleware)]
    )
    with TestClient(e.app) as client:
        e.client = client
        assert e.post(job_body()).status_code == 200
        replay = e.post(job_body())
        assert replay.headers["idempotent-replayed"] == "true" and replay.headers["x-request-id"]
        chunked = (b"x" * 1024 for _ in range(settings.request_body_limit // 1024 + 2))  # no content-length
        headers = {"Authorization": f"Bearer {e.key}", "Idempotency-Key": "k-big", "content-type": "application/json"}
        r = client.post(JOBS, content=chunked, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_the_official_client_retrying_a_lost_response_creates_one_job(settings):
    """The bug of issue 11: the first create succeeds but its response is lost (a proxy answers 502);
    the official openai client retries with the same Idempotency-Key and gets the first job back. (The
    official client sends the header only when given one: its ``_idempotency_header`` is None.)"""
    import openai

    e = Env(settings)
    lost = {"n": 0}

    class LoseFirstResponse:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["method"] == "POST" and lost["n"] == 0:
                lost["n"] += 1

                async def swallow(message):
                    pass

                await self.app(scope, receive, swallow)  # the job is created ...
                await send({"type": "http.response.start", "status": 502, "headers": []})
                await send({"type": "http.response.body", "body": b""})  # ... but the client never hears of it
                return
            await self.app(scope, receive, send)

    e.app.add_middleware(LoseFirstResponse)
    with TestClient(e.app) as client:
        e.client = client
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=e.key, http_client=client, max_retries=2)
        body = job_body()
        job = sdk.fine_tuning.jobs.create(
            model=body["model"],
            training_file=None,
            extra_body={"method": body["method"]},
            extra_headers={"Idempotency-Key": "create-1"},
        )
        assert lost["n"] == 1 and e.jobs() == 1 and e.enqueuer.jobs == [job.id]


def test_an_unexpected_error_releases_the_claim(settings):
    """A route that raises (a 500 rendered outside this middleware) leaves nothing stored: the retry runs."""
    e = Env(settings)

    def broken():
        raise RuntimeError("kaboom")

    e.app.dependency_overrides[deps.get_enqueuer] = broken
    with TestClient(e.app, raise_server_exceptions=False) as client:
        e.client = client
        r = e.post(job_body())
        assert r.status_code == 500 and "kaboom" not in r.text
        e.app.dependency_overrides[deps.get_enqueuer] = lambda: e.enqueuer
        again = e.post(job_body())
        assert again.status_code == 200 and "idempotent-replayed" not in again.headers
        assert e.jobs() == 1
