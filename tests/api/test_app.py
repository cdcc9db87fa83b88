"""App assembly: the factory, the background reaper in the lifespan, upload size limits."""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import deps
from service.db import repo
from service.db.session import session_scope
from api.main import app_factory, create_app
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
