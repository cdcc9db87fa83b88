"""The lease reaper: re-queues jobs whose worker stopped heartbeating, and enqueues them again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service.db import repo
from service.db.session import session_scope

log = logging.getLogger("api.reaper")


def reap_once(app: FastAPI) -> list[str]:
    """One pass: re-queue every running job with an expired lease and send it to the GPU queue again.
    Returns the re-queued job ids."""
    from api.deps import app_enqueuer, get_enqueuer

    with session_scope(app.state.session_factory) as session:
        job_ids = repo.reap_expired(session)
    if job_ids:
        override = app.dependency_overrides.get(get_enqueuer)
        enqueuer: Any = override() if override else app_enqueuer(app)
        for job_id in job_ids:
            log.warning("job %s lost its worker; re-queued", job_id)
            enqueuer.job(job_id)
    return job_ids


async def run_reaper(app: FastAPI, interval_s: float) -> None:
    """Call :func:`reap_once` every ``interval_s`` seconds until cancelled; errors are logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(reap_once, app)
        except Exception:  # a database or broker outage must not kill the loop
            log.exception("lease reaper pass failed")


@contextlib.asynccontextmanager
async def reaper_task(app: FastAPI, interval_s: float):
    """Run the reaper in the background for the lifetime of the block (no-op when ``interval_s`` <= 0)."""
    task = asyncio.create_task(run_reaper(app, interval_s)) if interval_s > 0 else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
