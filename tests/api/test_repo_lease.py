"""The worker-facing repository: claim, heartbeat, release, finish and the reaper."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from api.reaper import reap_once
from service.db import repo
from service.db.models import Job


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


def test_leases_use_the_database_clock_not_the_workers(env, job_id, monkeypatch):
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)  # this worker's clock is an hour behind
    with env.session() as s:
        claimed = repo.claim_job(s, job_id, "w-skewed", 60)
    monkeypatch.setattr(time, "time", real)
    assert abs(claimed["lease_expires_at"] - (real() + 60)) < 5  # the database's now + 60 s
    with env.session() as s:
        assert abs(repo.db_now(s) - real()) < 5
        assert repo.reap_expired(s) == []  # the lease is live by the database's clock


def test_db_now_on_postgresql():
    from sqlalchemy.exc import OperationalError

    from service.db.session import make_engine, make_session_factory

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        with make_session_factory(engine).begin() as s:
            now = repo.db_now(s)
    except OperationalError:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    finally:
        engine.dispose()
    assert abs(now - time.time()) < 5


def test_claim_respects_the_per_organization_running_cap(env):
    first, second = env.create_job()["id"], env.create_job()["id"]
    env.run_job(first, "w1")
    with env.session() as s:
        assert repo.org_running_jobs(s, second) == 1
        assert repo.claim_job(s, second, "w2", 60, max_running_per_org=1) is None
    assert _job(env, second)["status"] == "queued" and _job(env, second)["attempt"] == 0
    with env.session() as s:
        assert repo.claim_job(s, first, "w1", 60, max_running_per_org=1) is not None  # itself is not counted
        assert repo.claim_job(s, second, "w2", 60, max_running_per_org=2)["lease_owner"] == "w2"


def test_a_clean_release_does_not_count_as_an_attempt_and_sets_enqueued_at(env, job_id):
    env.run_job(job_id, "w1")
    with env.session() as s:
        assert repo.release_job(s, job_id, "w1", "queued")
    job = _job(env, job_id)
    assert job["attempt"] == 0 and abs(job["enqueued_at"] - time.time()) < 5
    assert env.run_job(job_id, "w2")["attempt"] == 1


def test_reaper_sets_enqueued_at(env, job_id):
    with env.session() as s:
        repo.claim_job(s, job_id, "w-dead", -1)
        assert repo.reap_expired(s) == [job_id]
    assert abs(_job(env, job_id)["enqueued_at"] - time.time()) < 5


def test_stale_queued_jobs_are_taken_once(env, job_id):
    fresh = env.create_job()["id"]
    with env.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None, created_at=int(time.time()) - 600))
        s.execute(update(Job).where(Job.id == fresh).values(enqueued_at=time.time()))
    with env.session() as s:
        assert repo.requeue_stale_queued(s, 120) == [job_id]
        assert repo.requeue_stale_queued(s, 120) == []  # its enqueued_at is now
    assert abs(_job(env, job_id)["enqueued_at"] - time.time()) < 5


def test_a_checkpoint_is_registered_only_by_the_lease_holder(env, job_id):
    env.run_job(job_id, "w1")
    with env.session() as s:
        row = repo.add_checkpoint(s, job_id, 2, {}, "/a", sha256="ab" * 32, lease_owner="w1")
    assert row["sha256"] == "ab" * 32
    with env.session() as s, pytest.raises(repo.LeaseLost):
        repo.add_checkpoint(s, job_id, 4, {}, "/b", lease_owner="w-stale")
    with env.session() as s:
        assert [c["step_number"] for c in repo.recent_checkpoints(s, job_id)] == [2]


def test_prune_keeps_the_newest_checkpoints(env, job_id):
    with env.session() as s:
        for step in (1, 2, 3, 4):
            repo.add_checkpoint(s, job_id, step, {}, f"/ckpt/{step}")
        assert sorted(repo.prune_checkpoints(s, job_id, keep=2)) == ["/ckpt/1", "/ckpt/2"]
        assert [c["step_number"] for c in repo.recent_checkpoints(s, job_id)] == [4, 3]
        assert repo.prune_checkpoints(s, job_id, keep=2) == []
