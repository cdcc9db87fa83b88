"""The gateway's housekeeping sweep: retention (``api.retention``) and expired idempotency keys
(``api.idempotency``), every ``settings.sweep_interval_s`` seconds. The lease reaper and the queued-job
sweep keep their own, shorter interval (``api.reaper``). Each pass runs in a worker thread; a failure
is logged and the next pass tries again (a database outage must not end the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.background import background
from api.idempotency import purge_idempotency_keys
from api.retention import retention_sweep

log = logging.getLogger("api.sweeps")


def sweep_once(app: FastAPI) -> dict[str, Any]:
    """One pass over every housekeeping task; returns what each did (for logs and tests)."""
    state = app.state
    done: dict[str, Any] = {}
    for name, task in (("retention", retention_sweep), ("idempotency_keys", purge_idempotency_keys)):
        try:
            done[name] = task(state.session_factory, state.settings)
        except Exception:
            log.exception("%s sweep failed", name)
            done[name] = None
    return done


async def _run(app: FastAPI, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await run_in_threadpool(sweep_once, app)


@contextlib.asynccontextmanager
async def sweep_task(app: FastAPI):
    """Run :func:`sweep_once` in the background for the lifetime of the block (off when the interval is 0)."""
    interval_s = float(app.state.settings.sweep_interval_s)
    async with background(_run(app, interval_s) if interval_s > 0 else None):
        yield
