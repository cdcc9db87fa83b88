"""Celery tasks. They take ids, never tensors or ORM objects, and are idempotent and resumable.

Process model: one worker process per GPU with the ``solo`` pool (``privtune worker`` sets it), so a
job's CUDA context lives in the process that created it and nothing forks after CUDA is initialised.
Scale out by starting more worker processes (``CUDA_VISIBLE_DEVICES`` picks the GPU).

Drain: a warm shutdown (SIGTERM) waits for the running task, which may train for hours, so Celery's
``worker_shutting_down`` signal sets :data:`DRAIN`; the running job's runner sees it within a second,
checkpoints, releases the job to ``queued`` and enqueues it again, and the task returns.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_JOB = "worker.run_job"
EXPORT_BOTTOM = "worker.export_bottom"

#: Set when this worker process is shutting down; the running job drains (see the module docstring).
DRAIN = threading.Event()


def request_drain(*_args: Any, **_kwargs: Any) -> None:
    """Celery ``worker_shutting_down`` receiver (also callable directly): the running job drains."""
    log.warning("worker shutting down: the running job is checkpointed and released")
    DRAIN.set()


def export_error_key(model: str, name: str) -> str:
    """Redis key of a failed bottom export's error (read by the gateway)."""
    return f"pt:export:error:{model}:{name}"


def export_guard_key(model: str, name: str) -> str:
    """Redis key that says an export of (model, artifact name) was requested."""
    return f"pt:export:{model}:{name}"


@lru_cache(maxsize=1)
def _resources() -> tuple[Any, Any, Any]:
    """Settings, a sessionmaker and a Redis client for this worker process (built on first use)."""
    from sqlalchemy.orm import sessionmaker

    from service.db.session import make_engine
    from service.redis_client import redis_client
    from service.settings import get_settings

    settings = get_settings()
    apply_torch_threads(settings)
    engine = make_engine(settings.database_url)
    redis = redis_client(settings.redis_url, longest_wait_s=1.0)  # the runner polls its step list every second
    return settings, sessionmaker(engine, expire_on_commit=False), redis


def apply_torch_threads(settings: Any) -> None:
    """Set this process's torch intra-op threads from ``settings.torch_threads`` (if set)."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(int(settings.torch_threads))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _enqueuer(app: Any):
    """``enqueue(job_id, countdown)`` over ``app`` (the runner's way to send a job again)."""
    from service.queue import enqueue_job

    def enqueue(job_id: str, countdown: float | None = None) -> None:
        enqueue_job(app, job_id, countdown=countdown)

    return enqueue


def run_job(job_id: str) -> str:
    """Train ``job_id`` until it ends, pauses, is released (drain, infrastructure fault) or loses its
    lease; returns the end state."""
    from celery import current_app

    from worker.runner import JobRunner

    settings, sessions, redis_client = _resources()
    device = os.environ.get("PRIVTUNE_WORKER_DEVICE") or None
    runner = JobRunner(
        job_id,
        settings,
        sessions,
        redis_client,
        worker_id(),
        device=device,
        enqueue=_enqueuer(current_app),
        drain=DRAIN,
    )
    return runner.run()


def export_failure_message(model: str, exc: BaseException) -> str:
    """What a tenant is told about a failed bottom export: no exception text, only what is known safe."""
    if isinstance(exc, ImportError | ModuleNotFoundError):
        return f"the provider's model package for {model} is not installed on the worker"
    if isinstance(exc, FileNotFoundError):
        return f"the provider's files for {model} are missing on the worker"
    return f"the worker could not export the device part of {model}; the service's operator has the details"


def export_bottom(model: str, split_layer: int, tail_layers: int = 0) -> str:
    """Export the device artifact the gateway serves for (model, split_layer, tail_layers); returns its digest.

    On failure: the error (``{"code": "bottom_export_failed", "message": <safe>}``) is written to
    :func:`export_error_key` for ``export_guard_ttl_s`` seconds, the request guard is deleted so a later
    request may try again, the traceback is logged and the exception re-raised."""
    from client_sdk.models.artifact import artifact_name
    from worker.models import export_bottom as export

    settings, _, redis = _resources()
    name = artifact_name(split_layer, tail_layers)
    out = Path(settings.artifact_dir) / "bottoms" / model / name
    try:
        artifact = export(
            model, int(split_layer), out, cache_dir=settings.model_cache_dir, tail_layers=int(tail_layers)
        )
    except Exception as exc:
        log.exception("export of the bottom of %s at %s failed", model, name)
        record_export_failure(redis, settings, model, name, exc)
        raise
    log.info("exported bottom of %s at l=%s to %s (digest %s)", model, split_layer, out, artifact.digest)
    return artifact.digest


def record_export_failure(redis: Any, settings: Any, model: str, name: str, exc: BaseException) -> None:
    """Write the export's error key and delete its guard (best effort: Redis may be what failed)."""
    error = {"code": "bottom_export_failed", "message": export_failure_message(model, exc)}
    try:
        redis.set(export_error_key(model, name), json.dumps(error), ex=int(settings.export_guard_ttl_s))
        redis.delete(export_guard_key(model, name))
    except Exception:
        log.exception("could not record the failed export of %s at %s", model, name)


def register(app: Any) -> None:
    """Register the tasks on a Celery app configured by :func:`service.queue.make_celery`, and connect
    the drain to the worker's warm shutdown."""
    from celery.signals import worker_shutting_down

    app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    app.task(name=EXPORT_BOTTOM, acks_late=True, reject_on_worker_lost=True)(export_bottom)
    worker_shutting_down.connect(request_drain, weak=False, dispatch_uid="privtune-drain")
