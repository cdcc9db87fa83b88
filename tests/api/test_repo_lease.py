"""The worker-facing repository: claim, heartbeat, release, finish and the reaper."""

from __future__ import annotations

import time

import pytest

from service.db import repo
from api.reaper import reap_once


@pytest.fixture
def job_id(env):
    return env.create_job()["id"]


def _job(env, job_id):
    with env.session() as s:
        return repo.get_job(s, job_id)


def test_claim_is_exclusive_and_returns_a_plain_dict(env, job_id):
    with env.session() as s:
        claimed = repo.claim_job(s, job_id, "w1", 60)
    assert type(claimed) is dict and claimed["status"] == "running" and claimed["lease_owner"] == "w1"
    assert claimed["attempt"] == 1 and claimed["started_at"] and claimed["method"]["privtune"]["num_labels"] == 2
    with env.session() as s:
        assert repo.claim_job(s, job_id, "w2", 60) is None  # live lease of w1
        again = repo.claim_job(s, job_id, "w1", 60)  # re-delivery to the same worker
    assert again["attempt"] == 2 and again["started_at"] == claimed["started_at"]
    with env.session() as s:
        assert repo.claim_job(s, "ftjob-missing", "w1", 60) is None


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_paused_or_cancelled_jobs_are_not_claimable(env, job_id, action):
    env.client.post(f"/v1/fine_tuning/jobs/{job_id}/{action}", headers=env.headers())
    with env.session() as s:
        assert repo.claim_job(s, job_id, "w1", 60) is None


def test_expired_lease_can_be_taken_over_and_old_owner_loses_it(env, job_id):
    with env.session() as s:
        repo.claim_job(s, job_id, "w1", -1)  # already expired
        taken = repo.claim_job(s, job_id, "w2", 60)
    assert taken["lease_owner"] == "w2"
    with env.session() as s, pytest.raises(repo.LeaseLost):
        repo.heartbeat(s, job_id, "w1", 60)
    with env.session() as s:
        assert not repo.finish_job(s, job_id, "w1", "succeeded")
    assert _job(env, job_id)["status"] == "running"


def test_heartbeat_extends_lease_and_records_progress(env, job_id):
    env.run_job(job_id, "w1")
    before = _job(env, job_id)["lease_expires_at"]
    with env.session() as s:
        assert repo.heartbeat(s, job_id, "w1", 600, steps_completed=7) == "running"
    job = _job(env, job_id)
    assert job["lease_expires_at"] > before and job["steps_completed"] == 7


def test_finish_never_overrides_cancel_and_clears_lease(env, job_id):
    env.run_job(job_id, "w1")
    env.client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=env.headers())
    with env.session() as s:
        assert repo.heartbeat(s, job_id, "w1", 60) == "cancelled"
        assert not repo.finish_job(s, job_id, "w1", "succeeded")
    job = _job(env, job_id)
    assert job["status"] == "cancelled" and job["lease_owner"] is None and job["fine_tuned_model"] is None
    with env.session() as s:  # lease cleared: the status is still reported, no LeaseLost
        assert repo.heartbeat(s, job_id, "w1", 60) == "cancelled"


def test_finish_failed_records_error(env, job_id):
    env.run_job(job_id, "w1")
    with env.session() as s:
        assert repo.finish_job(s, job_id, "w1", "failed", error={"code": "nan_loss", "message": "loss is NaN"})
    job = _job(env, job_id)
    assert job["status"] == "failed" and job["error"] == {"code": "nan_loss", "message": "loss is NaN", "param": None}
    assert job["finished_at"] and job["lease_owner"] is None
    with pytest.raises(ValueError), env.session() as s:
        repo.finish_job(s, job_id, "w1", "running")


def test_release_paused_and_queued(env, job_id):
    env.run_job(job_id, "w1")
    env.client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=env.headers())
    with env.session() as s:
        assert repo.release_job(s, job_id, "w1", "queued")  # shutdown release keeps the user's pause
    assert _job(env, job_id)["status"] == "paused" and _job(env, job_id)["lease_owner"] is None
    env.client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=env.headers())
    env.run_job(job_id, "w2")
    with env.session() as s:
        assert not repo.release_job(s, job_id, "w1", "queued")  # not the owner
        assert repo.release_job(s, job_id, "w2", "queued")
    assert _job(env, job_id)["status"] == "queued"


def test_checkpoints_latest(env, job_id):
    with env.session() as s:
        assert repo.latest_checkpoint(s, job_id) is None
        repo.add_checkpoint(s, job_id, 50, {"train_loss": 0.4}, "/a")
        repo.add_checkpoint(s, job_id, 100, {"train_loss": 0.3}, "/b", "custom-name")
        latest = repo.latest_checkpoint(s, job_id)
    assert (
        latest["step_number"] == 100
        and latest["path"] == "/b"
        and latest["fine_tuned_model_checkpoint"] == "custom-name"
    )


def test_reaper_requeues_dead_workers_jobs_and_enqueues_them(env, job_id):
    live = env.create_job()["id"]
    env.run_job(live, "w-live")
    with env.session() as s:
        repo.claim_job(s, job_id, "w-dead", 0.01)
    time.sleep(0.05)
    env.enqueuer.jobs.clear()
    assert reap_once(env.app) == [job_id]
    assert env.enqueuer.jobs == [job_id]
    job = _job(env, job_id)
    assert job["status"] == "queued" and job["lease_owner"] is None
    with env.session() as s:
        events, _ = repo.list_events(s, job_id)
        assert "restarted" in events[0]["message"] and events[0]["data"]["previous_worker"] == "w-dead"
        assert repo.reap_expired(s, time.time()) == []  # nothing left; the live job is untouched
    assert _job(env, live)["status"] == "running"
