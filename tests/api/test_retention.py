"""Retention: artifacts of jobs finished longer ago than settings.retention_days, and old uploads, are deleted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from api.retention import DAY_S, retention_sweep
from service.db import repo
from service.db.base import now_s
from service.db.models import File, Job
from tests.api.test_deletion import finished_job


def _age(env, table, row_id: str, days: float, column: str) -> None:
    with env.session() as s:
        s.execute(update(table).where(table.id == row_id).values({column: now_s() - int(days * DAY_S)}))


def _upload(env, name: str) -> tuple[str, Path]:
    path = Path(env.settings.file_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"privatized")
    with env.session() as s:
        file_id = repo.new_file_id()
        repo.create_file(
            s, file_id=file_id, organization_id=env.org_id, filename=name, purpose="fine-tune", size=10, path=str(path)
        )
    return file_id, path


def test_sweep_deletes_what_is_older_than_the_retention_period(env):
    env.settings.retention_days = 30
    old, old_dir = finished_job(env)
    recent, recent_dir = finished_job(env, "failed")
    _age(env, Job, old["id"], 31, "finished_at")
    _age(env, Job, recent["id"], 29, "finished_at")
    old_file, old_path = _upload(env, "old.safetensors")
    new_file, new_path = _upload(env, "new.safetensors")
    used_file, used_path = _upload(env, "used.safetensors")
    for file_id in (old_file, used_file):
        _age(env, File, file_id, 40, "created_at")
    with env.session() as s:  # a queued job still needs its training file
        s.execute(update(Job).where(Job.id == env.create_job()["id"]).values(training_file=used_file))

    result = retention_sweep(env.app.state.session_factory, env.settings)
    assert result.jobs == [old["id"]] and result.files == [old_file]
    assert str(old_dir) in result.paths and str(old_path) in result.paths
    assert not old_dir.exists() and recent_dir.exists()
    assert not old_path.exists() and new_path.exists() and used_path.exists()
    with env.session() as s:
        assert repo.get_job(s, old["id"])["artifacts_deleted_at"] is not None
        assert repo.get_file(s, old_file) is None and repo.get_file(s, used_file) is not None
    assert env.client.get(f"/v1/models/{old['fine_tuned_model']}", headers=env.headers()).status_code == 404
    assert env.client.get(f"/v1/fine_tuning/jobs/{old['id']}", headers=env.headers()).status_code == 200

    again = retention_sweep(env.app.state.session_factory, env.settings)
    assert again.jobs == [] and again.files == []  # nothing twice
    later = retention_sweep(env.app.state.session_factory, env.settings, now=now_s() + 2 * DAY_S)
    assert later.jobs == [recent["id"]] and not recent_dir.exists()


def test_zero_keeps_everything(env):
    assert env.settings.retention_days == 0
    job, job_dir = finished_job(env)
    _age(env, Job, job["id"], 10_000, "finished_at")
    result = retention_sweep(env.app.state.session_factory, env.settings)
    assert result.jobs == [] and result.files == [] and job_dir.exists()
