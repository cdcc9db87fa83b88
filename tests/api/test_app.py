"""App assembly: the factory, the background reaper in the lifespan, upload size limits."""

from __future__ import annotations

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import deps
from api.main import app_factory, create_app
from service.db import repo
from service.db.session import session_scope
from service.settings import get_settings
from tests.api.conftest import FakeEnqueuer


def test_app_factory_reads_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVTUNE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        app = app_factory()
        assert isinstance(app, FastAPI) and app.state.settings.data_dir == tmp_path
        assert app.state.redis is None and app.state.celery is None  # nothing connects at build time
    finally:
        get_settings.cache_clear()


def test_lifespan_reaper_requeues_expired_jobs(settings):
    settings = settings.model_copy(update={"reaper_interval_s": 0.05})
    app = create_app(settings)
    enqueuer = FakeEnqueuer()
    app.dependency_overrides[deps.get_enqueuer] = lambda: enqueuer
    with session_scope(app.state.session_factory) as s:
        _, org = repo.create_api_key(s, "acme")
        job = repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=0)
    with session_scope(app.state.session_factory) as s:
        repo.claim_job(s, job["id"], "dead-worker", 0.01)
    with TestClient(app):
        deadline = time.time() + 5
        while not enqueuer.jobs and time.time() < deadline:
            time.sleep(0.02)
    assert enqueuer.jobs == [job["id"]]
    with session_scope(app.state.session_factory) as s:
        assert repo.get_job(s, job["id"])["status"] == "queued"


def test_upload_over_the_file_limit_is_413(settings):
    app = create_app(settings.model_copy(update={"max_file_bytes": 1000}))
    with session_scope(app.state.session_factory) as s:
        key, _ = repo.create_api_key(s, "acme")
    with TestClient(app) as client:
        r = client.post(
            "/v1/files",
            files={"file": ("big.safetensors", b"\0" * 5000)},
            data={"purpose": "fine-tune"},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


# ---- authentication before the body, per-route limits, the read timeout (issue 11) -------------------

GIB = 1024**3


class RawClient:
    """Calls the ASGI app directly and counts the body bytes the app pulled; ``stall`` makes the client
    stop sending after its chunks (a slow client)."""

    def __init__(self, app):
        self.app = app

    def call(self, method, path, headers, chunks=(), stall=False, declared=None):
        import anyio

        pending = list(chunks)
        state = {"pulled": 0, "messages": []}
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if declared is not None:
            raw.append((b"content-length", str(declared).encode()))
        scope = dict(type="http", asgi={"version": "3.0"}, http_version="1.1", method=method, scheme="http")
        scope.update(path=path, raw_path=path.encode(), query_string=b"", root_path="", headers=raw)
        scope.update(server=("test", 80), client=("127.0.0.1", 1234))

        async def receive():
            if pending:
                body = pending.pop(0)
                state["pulled"] += len(body)
                return {"type": "http.request", "body": body, "more_body": bool(pending) or stall}
            if stall:
                await anyio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message):
            state["messages"].append(message)

        async def run():
            with anyio.fail_after(10):
                await self.app(scope, receive, send)

        anyio.run(run)
        start = next(m for m in state["messages"] if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in state["messages"] if m["type"] == "http.response.body")
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], headers, json.loads(body) if body else None, state["pulled"]


@pytest.fixture
def raw(settings):
    app = create_app(settings.model_copy(update={"body_read_timeout_s": 0.3, "rate_limit_requests_per_minute": 0}))
    with session_scope(app.state.session_factory) as s:
        key, _ = repo.create_api_key(s, "acme")
    return RawClient(app), {"authorization": f"Bearer {key}"}


MULTIPART = {"content-type": "multipart/form-data; boundary=xyz"}


def test_a_huge_upload_without_a_key_is_401_before_a_byte_is_read(raw):
    client, _ = raw
    chunks = [b"--xyz\r\n" + b"\0" * 65536] * 4
    for key in ({}, {"authorization": "Bearer sk-pt-000000000000-" + "x" * 43}):
        status, headers, body, pulled = client.call("POST", "/v1/files", {**MULTIPART, **key}, chunks, declared=GIB)
        assert status == 401 and pulled == 0 and headers["connection"] == "close"  # nobody reads the rest
        assert body["error"]["code"] in ("missing_api_key", "invalid_api_key")
    status, _, body, pulled = client.call("POST", "/v1/fine_tuning/jobs", MULTIPART, chunks, declared=GIB)
    assert status == 401 and pulled == 0  # any /v1 route, whatever the content type


def test_the_body_limit_comes_from_the_route_not_the_content_type(raw, settings):
    client, auth = raw
    chunks = [b"\0" * 1024]
    status, _, body, pulled = client.call("POST", "/v1/fine_tuning/jobs", {**auth, **MULTIPART}, chunks, declared=GIB)
    assert status == 415 and pulled == 0 and body["error"]["code"] == "unsupported_media_type"
    binary = {**auth, "content-type": "application/octet-stream"}  # not a step route: the JSON limit applies
    declared = settings.request_body_limit + 1
    status, _, body, pulled = client.call("POST", "/v1/fine_tuning/jobs", binary, chunks, declared=declared)
    assert status == 413 and pulled == 0 and body["error"]["code"] == "payload_too_large"
    big = settings.max_step_bytes + 1
    status, _, _, pulled = client.call("POST", "/v1/fine_tuning/jobs/ftjob-x/steps", binary, chunks, declared=big)
    assert status == 413 and pulled == 0
    streamed = [b"\0" * 16384] * (settings.request_body_limit // 16384 + 2)  # no Content-Length: cut at the limit
    status, headers, body, pulled = client.call("POST", "/v1/fine_tuning/jobs", {**auth, **JSON}, streamed)
    assert status == 413 and pulled <= settings.request_body_limit + 16384 and headers["connection"] == "close"


JSON = {"content-type": "application/json"}


def test_a_body_that_stalls_is_408_and_the_connection_closed(raw):
    client, auth = raw
    started = time.monotonic()
    status, headers, body, _ = client.call("POST", "/v1/fine_tuning/jobs", {**auth, **JSON}, [b'{"model":'], stall=True)
    assert status == 408 and body["error"]["code"] == "request_timeout" and headers["connection"] == "close"
    assert time.monotonic() - started < 5 and headers["x-request-id"]


def test_the_key_is_looked_up_once_per_request_and_probes_need_none(env, monkeypatch):
    calls = []
    real = repo.authenticate
    monkeypatch.setattr(repo, "authenticate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert env.client.get("/v1/models", headers=env.headers()).status_code == 200
    assert calls == [1]
    assert env.client.get("/healthz").status_code == 200 and env.client.get("/openapi.json").status_code == 200
    assert calls == [1]
