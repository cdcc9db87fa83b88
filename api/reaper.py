"""The lease reaper: re-queues jobs whose worker stopped heartbeating, and enqueues them again; and the
queued sweep, which sends again jobs that sat ``queued`` too long (created just before a crash, or
queued in a Redis that lost its data)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.background import background
from service import metrics
from service.db import repo
from service.db.session import session_scope

log = logging.getLogger("api.reaper")


def _enqueuer(app: FastAPI) -> Any:
    from api.deps import app_enqueuer, get_enqueuer

    override = app.dependency_overrides.get(get_enqueuer)
    return override() if override else app_enqueuer(app)


def reap_once(app: FastAPI) -> list[str]:
    """One pass: re-queue every running job with an expired lease and send it to the GPU queue again.
    Returns the re-queued job ids."""
    with session_scope(app.state.session_factory) as session:
        job_ids = repo.reap_expired(session)
    if job_ids:
        metrics.REAPED_JOBS.inc(len(job_ids))
        enqueuer = _enqueuer(app)
        for job_id in job_ids:
            log.warning("job %s lost its worker; re-queued", job_id)
            enqueuer.job(job_id)
    return job_ids


def requeue_queued_once(app: FastAPI) -> list[str]:
    """One pass of the queued sweep: every job ``queued`` for longer than ``settings.queued_requeue_s``
    since it was last sent (``coalesce(enqueued_at, created_at)``) gets ``enqueued_at`` = now and is
    sent to the GPU queue again (a duplicate send is harmless: the claim is conditional). Returns their
    ids."""
    with session_scope(app.state.session_factory) as session:
        job_ids = repo.requeue_stale_queued(session, float(app.state.settings.queued_requeue_s))
    if job_ids:
        metrics.REQUEUED_JOBS.inc(len(job_ids))
        enqueuer = _enqueuer(app)
        for job_id in job_ids:
            log.warning("job %s waited queued too long; sent to the GPU queue again", job_id)
            enqueuer.job(job_id)
    return job_ids


async def run_reaper(app: FastAPI, interval_s: float) -> None:
    """Call :func:`reap_once` and :func:`requeue_queued_once` every ``interval_s`` seconds until
    cancelled; errors are logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        for sweep in (reap_once, requeue_queued_once):
            try:
                await run_in_threadpool(sweep, app)
            except Exception:  # a database or broker outage must not kill the loop
                log.exception("%s pass failed", sweep.__name__)


@contextlib.asynccontextmanager
async def reaper_task(app: FastAPI, interval_s: float):
    """Run the reaper in the background for the lifetime of the block (no-op when ``interval_s`` <= 0)."""
    async with background(run_reaper(app, interval_s) if interval_s > 0 else None):
        yield
