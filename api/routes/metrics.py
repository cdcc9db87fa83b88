"""``/metrics``: Prometheus text exposition (no authentication; expose it to the scraper only).

Serves the process's counters and histograms (``service.metrics``: step latency, relay bytes, reaps,
re-queues, rate-limit rejections, HTTP requests, webhook deliveries) and, computed at scrape time by
:class:`StateCollector`:

- ``privtune_jobs{status}``: jobs by status, every status present (0 when none), from the database;
- ``privtune_running_jobs``: jobs running now;
- ``privtune_worker_heartbeat_age_seconds{worker}``: seconds since the oldest heartbeat among the
  running jobs each worker (``lease_owner``) holds, on the database's clock;
- ``privtune_queue_depth{queue}``: tasks waiting in Celery's ``gpu`` and ``artifacts`` queues (LLEN).

A database or Redis failure (or a probe timeout) never fails the scrape: the gauges of that source are
left out and ``privtune_scrape_errors_total{source}`` (``database`` | ``redis``; ``timeout`` when the
whole scrape-time collection outlasts its probe) counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from api.observability import PROBE_TIMEOUT_S, db_probe_timeout, probe_redis, run_probe
from service.db.models import Job
from service.db.repo import db_now
from service.db.repo import status as st
from service.queue import ARTIFACTS_QUEUE, GPU_QUEUE

router = APIRouter(tags=["health"])
log = logging.getLogger("api.metrics")

#: failures while computing the scrape-time gauges, by source
SCRAPE_ERRORS = Counter(
    "privtune_scrape_errors_total", "Scrape-time gauges left out because their source failed.", ["source"]
)  # database | redis | timeout
QUEUES = (GPU_QUEUE, ARTIFACTS_QUEUE)


class StateCollector(Collector):
    """Gauges read from the database and Redis on every ``collect`` (one query per source)."""

    def __init__(self, session_factory: Any, redis: Any):
        self.session_factory, self.redis = session_factory, redis

    def collect(self) -> Iterator[Metric]:
        """The job, running and heartbeat gauges, then the queue depths; a failed source is skipped
        and counted in ``privtune_scrape_errors_total``."""
        try:
            yield from self._jobs()
        except Exception as exc:
            SCRAPE_ERRORS.labels("database").inc()
            log.warning("scrape: database gauges left out: %r", exc)
        try:
            yield from self._queues()
        except Exception as exc:
            SCRAPE_ERRORS.labels("redis").inc()
            log.warning("scrape: queue depths left out: %r", exc)

    def _jobs(self) -> list[Metric]:
        session = self.session_factory()
        try:
            db_probe_timeout(session)
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
            beats = session.execute(
                select(Job.lease_owner, func.min(Job.heartbeat_at))
                .where(Job.status == st.RUNNING, Job.lease_owner.is_not(None), Job.heartbeat_at.is_not(None))
                .group_by(Job.lease_owner)
            ).all()
            now = db_now(session)
        finally:
            session.close()
        jobs = GaugeMetricFamily("privtune_jobs", "Jobs by status.", labels=["status"])
        for status in sorted(set(st.ALL) | set(counts)):
            jobs.add_metric([status], int(counts.get(status, 0)))
        running = GaugeMetricFamily("privtune_running_jobs", "Jobs running now.", value=int(counts.get(st.RUNNING, 0)))
        ages = GaugeMetricFamily(
            "privtune_worker_heartbeat_age_seconds",
            "Seconds since the oldest heartbeat among the running jobs of each worker.",
            labels=["worker"],
        )
        for worker, beat in beats:
            ages.add_metric([str(worker)], max(0.0, now - float(beat)))
        return [jobs, running, ages]

    def _queues(self) -> list[Metric]:
        pipe = self.redis.pipeline(transaction=False)
        for queue in QUEUES:
            pipe.llen(queue)
        depths = pipe.execute()
        family = GaugeMetricFamily("privtune_queue_depth", "Tasks waiting in a Celery queue.", labels=["queue"])
        for queue, depth in zip(QUEUES, depths, strict=True):
            family.add_metric([queue], int(depth))
        return [family]


def render_state(app: Any) -> bytes:
    """The exposition text of :class:`StateCollector` over the app's database and probe Redis."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(app.state.session_factory, probe_redis(app)))
    return generate_latest(registry)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format (``text/plain; version=0.0.4``): process metrics and scrape-time gauges."""
    try:
        state = await run_probe(request.app, render_state, request.app, timeout_s=2 * PROBE_TIMEOUT_S + 1)
    except Exception as exc:  # the probe timed out as a whole: neither source's gauges
        SCRAPE_ERRORS.labels("timeout").inc()
        log.warning("scrape: state gauges timed out: %r", exc)
        state = b""
    return Response(state + generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
