"""DELETE /v1/models/{ft model} and DELETE /v1/fine_tuning/jobs/{id}: stored artifacts removed, the model gone."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from service.db import repo
from service.db.models import Checkpoint, Event


def finished_job(env, status: str = "succeeded") -> tuple[dict, Path]:
    """A job that ran and ended, with a final adapter and two checkpoint directories on disk."""
    job = env.create_job()
    env.run_job(job["id"])
    job_dir = Path(env.settings.artifact_dir) / "jobs" / job["id"]
    for part in ("final", "checkpoints/step-5", "checkpoints/step-10"):
        (job_dir / part).mkdir(parents=True)
        (job_dir / part / "adapter.safetensors").write_bytes(b"weights")
    with env.session() as s:
        for step in (5, 10):
            repo.add_checkpoint(s, job["id"], step, {"loss": 0.1}, str(job_dir / "checkpoints" / f"step-{step}"))
        assert repo.finish_job(s, job["id"], "worker-1", status)
        job = repo.get_job(s, job["id"])
    return job, job_dir


def test_delete_a_fine_tuned_model_removes_its_artifacts_and_the_model(env):
    job, job_dir = finished_job(env)
    model = job["fine_tuned_model"]
    assert env.client.get(f"/v1/models/{model}", headers=env.headers()).status_code == 200
    assert env.client.delete(f"/v1/models/{model}", headers=env.headers(env.other_key)).status_code == 404
    assert job_dir.exists()  # another organization's attempt removed nothing

    r = env.client.delete(f"/v1/models/{model}", headers=env.headers())
    assert r.status_code == 200, r.text
    assert r.json() == {"id": model, "object": "model", "deleted": True}
    assert not job_dir.exists()
    with env.session() as s:
        assert repo.get_job(s, job["id"])["artifacts_deleted_at"] is not None
    gone = env.client.get(f"/v1/models/{model}", headers=env.headers())
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    listed = [m["id"] for m in env.client.get("/v1/models", headers=env.headers()).json()["data"]]
    assert model not in listed
    assert env.client.delete(f"/v1/models/{model}", headers=env.headers()).status_code == 404
    opened = env.client.post("/v1/privtune/inference/sessions", json={"model": model}, headers=env.headers())
    assert opened.status_code == 404  # cannot be used
    assert env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers()).status_code == 200
    listed = env.client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=env.headers()).json()
    assert listed["data"] == []  # no checkpoint whose files are gone is listed


def test_a_base_model_cannot_be_deleted(env):
    r = env.client.delete("/v1/models/minilm-l6", headers=env.headers())
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_deletable"
    assert env.client.get("/v1/models/minilm-l6", headers=env.headers()).status_code == 200
    assert env.client.delete("/v1/models/no-such-model", headers=env.headers()).status_code == 404
    assert env.client.delete("/v1/models/ft:minilm-l6:acme::ftjob-x", headers=env.headers()).status_code == 404


def test_delete_a_finished_job_removes_it_its_events_checkpoints_and_artifacts(env):
    for status in ("succeeded", "failed", "cancelled"):
        job, job_dir = finished_job(env, status)
        assert (
            env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers(env.other_key)).status_code
            == 404
        )
        r = env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers())
        assert r.status_code == 200, r.text
        assert r.json() == {"id": job["id"], "object": "fine_tuning.job", "deleted": True}
        assert not job_dir.exists()
        assert env.client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers()).status_code == 404
        with env.session() as s:
            for table in (Event, Checkpoint):
                assert s.scalar(select(func.count()).select_from(table).where(table.job_id == job["id"])) == 0
        if job["fine_tuned_model"]:
            assert env.client.get(f"/v1/models/{job['fine_tuned_model']}", headers=env.headers()).status_code == 404


def test_a_job_not_finished_cannot_be_deleted(env):
    queued = env.create_job()
    running = env.create_job()
    env.run_job(running["id"])
    for job in (queued, running):
        r = env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers())
        assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_job_status"
        with env.session() as s:
            assert repo.get_job(s, job["id"])["artifacts_deleted_at"] is None


def test_only_paths_inside_the_artifact_dir_are_removed(env, tmp_path):
    job, job_dir = finished_job(env)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    with env.session() as s:
        repo.add_checkpoint(s, job["id"], 20, {}, str(outside))
    assert env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers()).status_code == 200
    assert not job_dir.exists() and (outside / "keep").exists()


def test_a_cancelled_job_whose_worker_still_holds_it_is_409_retryable(env):
    job = env.create_job()
    env.run_job(job["id"])
    assert env.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=env.headers()).status_code == 200
    r = env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers())
    assert r.status_code == 409 and r.headers.get("x-should-retry") != "false" and r.headers["retry-after"]
    with env.session() as s:
        repo.finish_job(s, job["id"], "worker-1", "cancelled")  # the worker stops: the lease is cleared
    assert env.client.delete(f"/v1/fine_tuning/jobs/{job['id']}", headers=env.headers()).status_code == 200
