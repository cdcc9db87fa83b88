"""Webhook endpoints (per organization) and the delivery outbox.

The outbox is ``webhook_deliveries``, one row per (endpoint, job, event type), unique. Rows are created
by :func:`enqueue_job_end_deliveries` for jobs that ended after the endpoint was registered, taken one
at a time by :func:`claim_delivery` (a conditional ``UPDATE`` that pushes ``next_attempt_at`` past the
send, so two dispatchers never send the same row at once) and closed by :func:`record_attempt`.
Times here are the caller's unix seconds (``now``), so tests and dispatchers pass their own clock.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.errors import ObjectNotFound
from service.db.models import Job, WebhookDelivery, WebhookEndpoint
from service.db.repo import status as st
from service.db.repo._common import snapshot

ENDPOINT_ID_PREFIX = "whep_"
MESSAGE_ID_PREFIX = "msg_"
#: job status -> event type
JOB_END_EVENTS = {
    st.SUCCEEDED: "fine_tuning.job.succeeded",
    st.FAILED: "fine_tuning.job.failed",
    st.CANCELLED: "fine_tuning.job.cancelled",
}


def create_endpoint(session: Session, organization_id: str, url: str, secret: str) -> dict[str, Any]:
    """Register ``url`` for the organization with its signing ``secret``; returns the snapshot."""
    row = WebhookEndpoint(
        id=new_id(ENDPOINT_ID_PREFIX), organization_id=organization_id, url=url, secret=secret, created_at=now_s()
    )
    session.add(row)
    session.flush()
    return snapshot(row)


def list_endpoints(session: Session, organization_id: str) -> list[dict[str, Any]]:
    """The organization's endpoints, newest first."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.organization_id == organization_id)
    return [snapshot(r) for r in session.scalars(stmt.order_by(WebhookEndpoint.seq.desc()))]


def delete_endpoint(session: Session, organization_id: str, endpoint_id: str) -> None:
    """Delete the endpoint (and its deliveries); :class:`ObjectNotFound` if absent or another org's."""
    result = session.execute(
        delete(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id, WebhookEndpoint.organization_id == organization_id
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ObjectNotFound("webhook endpoint", endpoint_id, param="webhook_id")


def _insert(session: Session):
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(WebhookDelivery)


def enqueue_job_end_deliveries(session: Session, now: float, limit: int = 500) -> int:
    """Insert a pending delivery for every (endpoint, ended job of its organization) pair that has none,
    where the job finished at or after the endpoint was created; at most ``limit`` rows per call. A row
    another dispatcher inserted first is skipped (the unique constraint). Returns rows inserted."""
    pairs = session.execute(
        select(WebhookEndpoint.id, Job.id, Job.status)
        .join(Job, Job.organization_id == WebhookEndpoint.organization_id)
        .where(
            Job.status.in_(tuple(JOB_END_EVENTS)),
            Job.finished_at.is_not(None),
            Job.finished_at >= WebhookEndpoint.created_at,
            ~exists().where(and_(WebhookDelivery.endpoint_id == WebhookEndpoint.id, WebhookDelivery.job_id == Job.id)),
        )
        .limit(limit)
    ).all()
    inserted = 0
    for endpoint_id, job_id, status in pairs:
        event_type = JOB_END_EVENTS[status]
        msg_id = new_id(MESSAGE_ID_PREFIX)
        payload = {
            "id": msg_id,
            "object": "event",
            "type": event_type,
            "created_at": int(now),
            "data": {"id": job_id},
        }
        stmt = (
            _insert(session)
            .values(
                id=msg_id,
                endpoint_id=endpoint_id,
                job_id=job_id,
                event_type=event_type,
                payload=payload,
                attempts=0,
                next_attempt_at=float(now),
                created_at=int(now),
            )
            .on_conflict_do_nothing(index_elements=["endpoint_id", "job_id", "event_type"])
            .returning(WebhookDelivery.id)
        )
        inserted += len(session.execute(stmt).all())  # nothing returned: another dispatcher was first
    return inserted


def claim_delivery(session: Session, now: float, lease_s: float) -> dict[str, Any] | None:
    """Take the most overdue pending delivery: a conditional ``UPDATE`` moves its ``next_attempt_at``
    to ``now + lease_s`` only if nobody moved it first. Returns the delivery with its endpoint's ``url``
    and ``secret``, or None when nothing is due."""
    for _ in range(5):  # lost races: try the next due row
        row = session.execute(
            select(WebhookDelivery.id, WebhookDelivery.next_attempt_at)
            .where(
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.failed_at.is_(None),
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(1)
        ).first()
        if row is None:
            return None
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == row.id,
                WebhookDelivery.next_attempt_at == row.next_attempt_at,
                WebhookDelivery.delivered_at.is_(None),
                WebhookDelivery.failed_at.is_(None),
            )
            .values(next_attempt_at=now + lease_s)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if taken == 1:
            found = session.execute(
                select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(WebhookDelivery.id == row.id)
                .execution_options(populate_existing=True)
            ).one()
            return {**snapshot(found[0]), "url": found[1], "secret": found[2]}
    return None


def record_attempt(
    session: Session, delivery_id: str, *, now: float, delivered: bool, error: str | None, retry_at: float | None
) -> None:
    """Close one attempt: ``attempts`` + 1, then delivered (``delivered_at``), or due again at
    ``retry_at``, or given up (``failed_at``) when ``retry_at`` is None."""
    values: dict[str, Any] = {"attempts": WebhookDelivery.attempts + 1, "last_error": error}
    if delivered:
        values["delivered_at"] = int(now)
    elif retry_at is None:
        values["failed_at"] = int(now)
    else:
        values["next_attempt_at"] = retry_at
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def get_delivery(session: Session, delivery_id: str) -> dict[str, Any] | None:
    """Snapshot of one delivery row (None if absent)."""
    row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)).one_or_none()
    return None if row is None else snapshot(row)


def list_deliveries(session: Session, endpoint_id: str) -> list[dict[str, Any]]:
    """The endpoint's deliveries, oldest first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id).order_by(WebhookDelivery.seq)
    return [snapshot(r) for r in session.scalars(stmt)]
