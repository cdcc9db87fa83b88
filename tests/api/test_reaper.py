"""The gateway's sweeps: the lease reaper and the queued sweep, each sending what it took to the GPU
queue again and counting it in the Prometheus metrics."""

from __future__ import annotations

import time

from sqlalchemy import update

from api.reaper import reap_once, requeue_queued_once
from service import metrics
from service.db import repo
from service.db.models import Job


def _set(env, job_id, **values):
    with env.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def _job(env, job_id):
    with env.session() as s:
        return repo.get_job(s, job_id)


def test_a_job_stuck_in_queued_is_sent_again_and_counted(env):
    stuck, fresh = env.create_job()["id"], env.create_job()["id"]
    old = time.time() - env.settings.queued_requeue_s - 5
    _set(env, stuck, enqueued_at=None, created_at=int(old))  # created just before a crash: never sent
    _set(env, fresh, enqueued_at=time.time())
    env.enqueuer.jobs.clear()
    before = metrics.REQUEUED_JOBS._value.get()
    assert requeue_queued_once(env.app) == [stuck]
    assert env.enqueuer.jobs == [stuck] and metrics.REQUEUED_JOBS._value.get() == before + 1
    assert abs(_job(env, stuck)["enqueued_at"] - time.time()) < 5
    assert requeue_queued_once(env.app) == []  # sent just now: not again until queued_requeue_s passes
    assert env.enqueuer.jobs == [stuck]


def test_an_old_enqueue_counts_not_the_creation_and_running_jobs_are_left_alone(env):
    resent, running = env.create_job()["id"], env.create_job()["id"]
    old = time.time() - env.settings.queued_requeue_s - 5
    _set(env, resent, created_at=int(time.time()), enqueued_at=old)  # queued in a Redis that lost it
    env.run_job(running, "w1")
    _set(env, running, enqueued_at=old)
    assert requeue_queued_once(env.app) == [resent]


def test_the_reaper_counts_what_it_reaps_and_sets_enqueued_at(env):
    job_id = env.create_job()["id"]
    with env.session() as s:
        repo.claim_job(s, job_id, "w-dead", -1)
    _set(env, job_id, enqueued_at=None)
    before = metrics.REAPED_JOBS._value.get()
    assert reap_once(env.app) == [job_id]
    assert metrics.REAPED_JOBS._value.get() == before + 1
    job = _job(env, job_id)
    assert job["status"] == "queued" and abs(job["enqueued_at"] - time.time()) < 5
    assert requeue_queued_once(env.app) == []  # just re-enqueued by the reaper
