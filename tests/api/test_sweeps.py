"""The gateway's housekeeping sweep runs retention and the idempotency-key purge, and survives a failure."""

from __future__ import annotations

from sqlalchemy import update

from api.retention import DAY_S
from api.sweeps import sweep_once
from service.db.base import now_s
from service.db.models import IdempotencyKey, Job
from tests.api.conftest import job_body
from tests.api.test_deletion import finished_job


def test_one_pass_applies_retention_and_purges_old_idempotency_keys(env):
    env.settings.retention_days = 1
    old, old_dir = finished_job(env)
    with env.session() as s:
        s.execute(update(Job).where(Job.id == old["id"]).values(finished_at=now_s() - 2 * int(DAY_S)))
    headers = {**env.headers(), "Idempotency-Key": "sweep-1"}
    assert env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=headers).status_code == 200
    with env.session() as s:
        s.execute(update(IdempotencyKey).values(created_at=now_s() - env.settings.idempotency_ttl_s - 10))

    done = sweep_once(env.app)
    assert done["retention"].jobs == [old["id"]] and not old_dir.exists()
    assert done["idempotency_keys"] == 1
    again = env.client.post("/v1/fine_tuning/jobs", json=job_body(), headers=headers)
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers  # the key was forgotten


def test_a_failing_task_does_not_stop_the_others(env, monkeypatch):
    import api.sweeps as sweeps

    def broken(*_args, **_kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(sweeps, "retention_sweep", broken)
    done = sweep_once(env.app)
    assert done["retention"] is None and done["idempotency_keys"] == 0
