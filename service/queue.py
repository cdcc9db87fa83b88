"""The Celery application shared by the gateway (which only sends tasks, by name) and the worker.

Redelivery: Redis re-delivers an unacknowledged task after its visibility timeout, so the timeout
is set longer than any job in all three places (broker transport, result backend transport, and
the backend's own ``visibility_timeout``); the database lease, not Celery, decides who trains.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings

RUN_JOB_TASK = "worker.run_job"
EXPORT_BOTTOM_TASK = "worker.export_bottom"
GPU_QUEUE = "gpu"
ARTIFACTS_QUEUE = "artifacts"


def celery_url(redis_url: str) -> str:
    """The Celery/kombu spelling of a redis-py URL: ``unix:///path.sock`` becomes
    ``redis+socket:///path.sock`` (the embedded Redis listens on a unix socket); others are unchanged."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: late acks, one task per worker process at a time, JSON only, routes by name."""
    visibility = {"visibility_timeout": settings.job_visibility_timeout_s}
    url = celery_url(settings.redis_url)
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": dict(visibility),
        "result_backend_transport_options": dict(visibility),
        "visibility_timeout": settings.job_visibility_timeout_s,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_routes": {RUN_JOB_TASK: {"queue": GPU_QUEUE}, EXPORT_BOTTOM_TASK: {"queue": ARTIFACTS_QUEUE}},
        "task_default_queue": "default",
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
    }


def make_celery(settings: Settings, name: str = "privtune") -> Celery:
    """A Celery app configured by :func:`celery_config` (connects lazily, on first use)."""
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app


def enqueue_job(celery: Celery, job_id: str, countdown: float | None = None) -> str:
    """Send ``worker.run_job(job_id)`` to the ``gpu`` queue, to run no sooner than ``countdown`` seconds
    from now if given; returns the Celery task id."""
    delay = {} if countdown is None else {"countdown": countdown}
    return celery.send_task(RUN_JOB_TASK, args=[job_id], queue=GPU_QUEUE, **delay).id


def enqueue_export(celery: Celery, model: str, split_layer: int, tail_layers: int = 0) -> str:
    """Send ``worker.export_bottom(model, split_layer, tail_layers)`` to the ``artifacts`` queue; returns
    the task id."""
    return celery.send_task(EXPORT_BOTTOM_TASK, args=[model, split_layer, tail_layers], queue=ARTIFACTS_QUEUE).id
