"""Fixtures for gateway tests: a migrated SQLite database per test, two organizations with keys,
and fakes for the step relay, the task enqueuer and Redis (no Redis, broker or worker needed)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api import deps
from api.main import create_app
from client_sdk import wire
from service.db import repo
from service.db.migrate import upgrade_to_head
from service.db.session import session_scope
from service.relay import StepRejected, StepTimeout
from service.settings import Settings


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    upgrade_to_head(f"sqlite:///{path}")
    return str(path)


@pytest.fixture
def settings(tmp_path, template_db) -> Settings:
    db = tmp_path / "privtune.sqlite3"
    shutil.copy(template_db, db)
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{db}",
        redis_url="redis://127.0.0.1:1/0",  # never contacted: Redis is faked
        reaper_interval_s=0,
        webhook_interval_s=0,
        rate_limit_requests_per_minute=0,  # the per-key limiter needs Redis: tests/api/test_limits.py
        max_concurrent_requests_per_key=0,
        max_step_bytes=1024 * 1024,
        request_body_limit=64 * 1024,
        step_timeout_s=1,
    )


@dataclass
class FakeRelay:
    """Stands in for ``service.relay.StepRelay``: records submissions, answers a canned reply or raises."""

    reply: bytes = b"reply-bytes"
    error: Exception | None = None
    calls: list[tuple[str, int, bytes, float]] = field(default_factory=list)

    async def submit(self, job_id: str, step: int, payload: bytes, timeout_s: float) -> bytes:
        self.calls.append((job_id, step, payload, timeout_s))
        if self.error is not None:
            raise self.error
        return self.reply


@dataclass
class FakeEnqueuer:
    jobs: list[str] = field(default_factory=list)
    exports: list[tuple[str, int, int]] = field(default_factory=list)  # (model, split_layer, tail_layers)
    fail: bool = False

    def job(self, job_id: str) -> None:
        if self.fail:
            from kombu.exceptions import OperationalError

            raise OperationalError("broker down")
        self.jobs.append(job_id)

    def export(self, model: str, split_layer: int, tail_layers: int = 0) -> None:
        self.exports.append((model, split_layer, tail_layers))


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def set(self, key: str, value: Any, nx: bool = False, ex: int | None = None) -> bool | None:
        if nx and key in self.data:
            return None
        self.data[key] = value
        return True

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def delete(self, key: str) -> int:
        return int(self.data.pop(key, None) is not None)

    def close(self) -> None:
        pass


@dataclass
class Env:
    client: TestClient
    app: Any
    settings: Settings
    relay: FakeRelay
    enqueuer: FakeEnqueuer
    redis: FakeRedis
    key: str
    org_id: str
    other_key: str

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def session(self):
        return session_scope(self.app.state.session_factory)

    def create_job(self, model: str = "minilm-l6", **privtune: Any) -> dict[str, Any]:
        body = job_body(model, **privtune)
        r = self.client.post("/v1/fine_tuning/jobs", json=body, headers=self.headers())
        assert r.status_code == 200, r.text
        return r.json()

    def run_job(self, job_id: str, worker: str = "worker-1") -> dict[str, Any]:
        with self.session() as s:
            claimed = repo.claim_job(s, job_id, worker, 60)
        assert claimed is not None
        return claimed


def job_body(model: str = "minilm-l6", **privtune: Any) -> dict[str, Any]:
    cfg = {"task": "classification", "num_labels": 2, "total_steps": 10, "batch_size": 8, "max_tokens": 16}
    cfg.update(privtune)
    return {"model": model, "method": {"type": "privtune", "privtune": cfg}}


@pytest.fixture
def env(settings) -> Env:
    app = create_app(settings)
    relay, enqueuer, redis = FakeRelay(), FakeEnqueuer(), FakeRedis()
    app.dependency_overrides[deps.get_relay] = lambda: relay
    app.dependency_overrides[deps.get_enqueuer] = lambda: enqueuer
    app.dependency_overrides[deps.get_redis] = lambda: redis
    with session_scope(app.state.session_factory) as s:
        key, org_id = repo.create_api_key(s, "acme")
        other_key, _ = repo.create_api_key(s, "globex")
    with TestClient(app) as client:
        yield Env(client, app, settings, relay, enqueuer, redis, key, org_id, other_key)


def step_payload(
    job_id: str,
    step: int = 1,
    batch: int = 2,
    tokens: int = 5,
    hidden: int = 384,
    grad: tuple[int, ...] | None = None,
    mask_shape: tuple[int, ...] | None = None,
    kind: str = "step",
    extra: dict[str, str] | None = None,
    hidden_dtype: Any = np.float32,
) -> bytes:
    """A step payload as the SDK sends it (numpy; float16 on the wire)."""
    tensors: dict[str, Any] = {
        "hidden": np.zeros((batch, tokens, hidden), dtype=hidden_dtype),
        "attention_mask": np.ones(mask_shape or (batch, tokens), dtype=np.uint8),
    }
    if grad is not None:
        tensors["grad_output"] = np.zeros(grad, dtype=np.float32)
    header = wire.WireHeader(job_id=job_id, step=step, kind=kind, extra=extra or {})
    return wire.encode(tensors, header)


__all__ = ["Env", "FakeRelay", "StepRejected", "StepTimeout", "job_body", "step_payload"]
