"""Celery tasks. They take ids, never tensors or ORM objects, and are idempotent and resumable.

Process model: one worker process per GPU with the ``solo`` pool (``privtune worker`` sets it), so a
job's CUDA context lives in the process that created it and nothing forks after CUDA is initialised.
Scale out by starting more worker processes (``CUDA_VISIBLE_DEVICES`` picks the GPU).
"""

from __future__ import annotations

import logging
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUN_JOB = "worker.run_job"
EXPORT_BOTTOM = "worker.export_bottom"


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


def run_job(job_id: str) -> str:
    """Train ``job_id`` until it ends, pauses or loses its lease; returns the end state."""
    from worker.runner import JobRunner

    settings, sessions, redis_client = _resources()
    device = os.environ.get("PRIVTUNE_WORKER_DEVICE") or None
    return JobRunner(job_id, settings, sessions, redis_client, worker_id(), device=device).run()


def export_bottom(model: str, split_layer: int, tail_layers: int = 0) -> str:
    """Export the device artifact the gateway serves for (model, split_layer, tail_layers); returns its digest."""
    from client_sdk.models.artifact import artifact_name
    from worker.models import export_bottom as export

    settings = _resources()[0]
    out = Path(settings.artifact_dir) / "bottoms" / model / artifact_name(split_layer, tail_layers)
    artifact = export(model, int(split_layer), out, cache_dir=settings.model_cache_dir, tail_layers=int(tail_layers))
    log.info("exported bottom of %s at l=%s to %s (digest %s)", model, split_layer, out, artifact.digest)
    return artifact.digest


def register(app: Any) -> None:
    """Register the tasks on a Celery app configured by :func:`service.queue.make_celery`."""
    app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(run_job)
    app.task(name=EXPORT_BOTTOM, acks_late=True, reject_on_worker_lost=True)(export_bottom)
