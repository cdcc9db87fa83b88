"""What the worker calls: claim a job under a lease, heartbeat, release, finish; and the reaper.

Every function runs in the caller's transaction (use ``session_scope`` or ``sessionmaker.begin()``
so it commits) and each state change is a single conditional ``UPDATE``, so two workers (or two
gateway reapers) can never both win. Leases are float unix times; the database row is the source of
truth, not Celery. These functions write no events (the worker writes its own, richer ones), except
the reaper's "Job restarted", which has no worker to write it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.db.base import now_f, now_s
from service.db.errors import LeaseLost, ObjectNotFound
from service.db.models import Job
from service.db.repo import status as st
from service.db.repo._common import snapshot
from service.db.repo.events import add_event
from service.db.repo.naming import default_model_name

_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}


def _update(session: Session, *where: Any, **values: Any) -> int:
    result = session.execute(update(Job).where(*where).values(**values).execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _current(session: Session, job_id: str) -> Job:
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    job = session.scalars(stmt).one_or_none()
    if job is None:
        raise ObjectNotFound("fine-tuning job", job_id)
    return job


def claim_job(session: Session, job_id: str, worker_id: str, lease_s: float) -> dict[str, Any] | None:
    """Atomically take the job: status ``running``, lease to ``worker_id`` for ``lease_s`` seconds,
    ``started_at`` set once, ``attempt`` + 1. Returns a plain dict snapshot, or None when the job is
    not claimable (absent, paused, cancelled, finished, or running under another worker's live lease).
    """
    now = now_f()
    claimed = _update(
        session,
        Job.id == job_id,
        Job.status.in_(st.CLAIMABLE),
        or_(Job.lease_owner.is_(None), Job.lease_expires_at < now, Job.lease_owner == worker_id),
        status=st.RUNNING,
        lease_owner=worker_id,
        lease_expires_at=now + lease_s,
        heartbeat_at=now,
        started_at=func.coalesce(Job.started_at, int(now)),
        attempt=Job.attempt + 1,
    )
    return snapshot(_current(session, job_id)) if claimed == 1 else None


def heartbeat(session: Session, job_id: str, worker_id: str, lease_s: float, steps_completed: int | None = None) -> str:
    """Extend the lease (and record progress) while ``worker_id`` owns the job; return its status.

    The returned status is the control flag: ``running`` -> go on; ``cancelled`` -> stop;
    ``paused`` -> checkpoint and :func:`release_job`. Raises :class:`LeaseLost` when another worker
    owns the job or it was re-queued by the reaper; then the caller must stop without writing.
    """
    now = now_f()
    values: dict[str, Any] = {"lease_expires_at": now + lease_s, "heartbeat_at": now}
    if steps_completed is not None:
        values["steps_completed"] = steps_completed
    if _update(session, Job.id == job_id, Job.lease_owner == worker_id, **values) == 1:
        return _current(session, job_id).status
    job = _current(session, job_id)
    if job.lease_owner is None and (job.status in st.TERMINAL or job.status == st.PAUSED):
        return job.status
    raise LeaseLost(job_id, worker_id, job.lease_owner, job.status)


def check_control(session: Session, job_id: str, worker_id: str) -> str:
    """Read-only twin of :func:`heartbeat` for every step between heartbeats: the job's status, or
    :class:`LeaseLost` when another worker owns it or the reaper re-queued it. One indexed SELECT."""
    row = session.execute(select(Job.status, Job.lease_owner).where(Job.id == job_id)).one_or_none()
    if row is None:
        raise ObjectNotFound("fine-tuning job", job_id)
    status, owner = row
    if owner == worker_id or (owner is None and (status in st.TERMINAL or status == st.PAUSED)):
        return status
    raise LeaseLost(job_id, worker_id, owner, status)


def release_job(session: Session, job_id: str, worker_id: str, status: str) -> bool:
    """Give the job back without finishing it: ``paused`` (after a pause checkpoint) or ``queued``
    (e.g. worker shutdown). Clears the lease. Never overrides a finished/cancelled job, and
    ``queued`` never overrides ``paused``. Returns False when ``worker_id`` did not own the job."""
    if status not in (st.PAUSED, st.QUEUED):
        raise ValueError(f"release status must be 'paused' or 'queued', got {status!r}")
    allowed = {st.RUNNING, st.QUEUED} | ({st.PAUSED} if status == st.PAUSED else set())
    owned = Job.id == job_id, Job.lease_owner == worker_id
    if _update(session, *owned, Job.status.in_(allowed), status=status, **_NO_LEASE) == 1:
        return True
    return _update(session, *owned, **_NO_LEASE) == 1


def finish_job(
    session: Session,
    job_id: str,
    worker_id: str,
    status: str,
    error: dict[str, Any] | None = None,
    fine_tuned_model: str | None = None,
    trained_tokens: int | None = None,
) -> bool:
    """Record the end of the job (``succeeded`` / ``failed`` / ``cancelled``) and clear the lease.

    Only the lease owner may finish; a job already cancelled stays cancelled (its lease is still
    cleared). A succeeded job without ``fine_tuned_model`` gets ``ft:<base>:<org>:<suffix>:<id>``.
    ``error`` is ``{code, message, param}``. Returns True when the status was written.
    """
    if status not in st.TERMINAL:
        raise ValueError(f"finish status must be one of {sorted(st.TERMINAL)}, got {status!r}")
    if status == st.SUCCEEDED and fine_tuned_model is None:
        fine_tuned_model = default_model_name(session, job_id)
    if error is not None:
        error = {"code": error.get("code"), "message": error.get("message", ""), "param": error.get("param")}
    values: dict[str, Any] = {"status": status, "finished_at": now_s(), "error": error, **_NO_LEASE}
    if fine_tuned_model is not None:
        values["fine_tuned_model"] = fine_tuned_model
    if trained_tokens is not None:
        values["trained_tokens"] = trained_tokens
    owned = Job.id == job_id, Job.lease_owner == worker_id
    if _update(session, *owned, Job.status.not_in(st.TERMINAL), **values) != 1:
        _update(session, *owned, **_NO_LEASE)
        return False
    return True


def reap_expired(session: Session, now: float | datetime | None = None) -> list[str]:
    """Re-queue running jobs whose lease expired before ``now`` (a dead worker): status ``queued``,
    lease cleared, event "Job restarted". Returns the ids of the jobs this call re-queued (the
    caller re-enqueues them); concurrent reapers never both take the same job."""
    if isinstance(now, datetime):
        now = now.timestamp()
    now = now_f() if now is None else float(now)
    expired = Job.status == st.RUNNING, Job.lease_expires_at < now
    reaped = []
    for job_id, owner in session.execute(select(Job.id, Job.lease_owner).where(*expired)).all():
        if _update(session, Job.id == job_id, *expired, status=st.QUEUED, **_NO_LEASE) == 1:
            add_event(
                session,
                job_id,
                "Job restarted: its worker stopped renewing the lease; resuming from the last checkpoint",
                level="warn",
                data={"reason": "lease_expired", "previous_worker": owner},
            )
            reaped.append(job_id)
    return reaped
