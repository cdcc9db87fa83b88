"""What the worker calls: claim a job under a lease, heartbeat, release, finish; and the reaper.

Every function runs in the caller's transaction (use ``session_scope`` or ``sessionmaker.begin()``
so it commits) and each state change is a single conditional ``UPDATE``, so two workers (or two
gateway reapers) can never both win. Leases are float unix times of the database server's clock
(:func:`db_now`), never a worker's, so a worker with a skewed clock neither loses its lease early nor
keeps a dead one alive; the database row is the source of truth, not Celery. These functions write no events (the worker writes its own, richer ones), except
the reaper's "Job restarted", which has no worker to write it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, literal_column, or_, select, update
from sqlalchemy.orm import Session

from service.db.errors import LeaseLost, ObjectNotFound
from service.db.models import Job, Organization
from service.db.repo import status as st
from service.db.repo._common import snapshot
from service.db.repo.events import add_event
from service.db.repo.naming import default_model_name

_NO_LEASE = {"lease_owner": None, "lease_expires_at": None}


#: The database server's unix time with sub-second precision, per dialect.
_CLOCK_SQL = {
    "postgresql": "extract(epoch from clock_timestamp())",
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
}


def db_now(session: Session) -> float:
    """The database server's current unix time (seconds, float): the one clock of every lease."""
    dialect = session.get_bind().dialect.name
    return float(session.scalar(select(literal_column(_CLOCK_SQL[dialect]))))


def _update(session: Session, *where: Any, **values: Any) -> int:
    result = session.execute(update(Job).where(*where).values(**values).execution_options(synchronize_session=False))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _current(session: Session, job_id: str) -> Job:
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    job = session.scalars(stmt).one_or_none()
    if job is None:
        raise ObjectNotFound("fine-tuning job", job_id)
    return job


def claim_job(
    session: Session, job_id: str, worker_id: str, lease_s: float, max_running_per_org: int = 0
) -> dict[str, Any] | None:
    """Atomically take the job: status ``running``, lease to ``worker_id`` for ``lease_s`` seconds,
    ``started_at`` set once, ``attempt`` + 1. Returns a plain dict snapshot, or None when the job is
    not claimable (absent, paused, cancelled, finished, or running under another worker's live lease)
    or, with ``max_running_per_org`` > 0, when its organization already has that many running jobs
    (the organization's row is locked first on PostgreSQL, so two claims cannot both pass the cap).
    """
    now = db_now(session)
    where = [
        Job.id == job_id,
        Job.status.in_(st.CLAIMABLE),
        or_(Job.lease_owner.is_(None), Job.lease_expires_at < now, Job.lease_owner == worker_id),
    ]
    if max_running_per_org > 0:
        org = session.scalar(select(Job.organization_id).where(Job.id == job_id))
        if org is None:
            return None
        session.execute(select(Organization.id).where(Organization.id == org).with_for_update())
        others = select(func.count(Job.id)).where(
            Job.organization_id == org, Job.status == st.RUNNING, Job.id != job_id
        )
        where.append(others.scalar_subquery() < max_running_per_org)
    claimed = _update(
        session,
        *where,
        status=st.RUNNING,
        lease_owner=worker_id,
        lease_expires_at=now + lease_s,
        heartbeat_at=now,
        started_at=func.coalesce(Job.started_at, int(now)),
        attempt=Job.attempt + 1,
    )
    return snapshot(_current(session, job_id)) if claimed == 1 else None


def defer_queued(session: Session, job_id: str, max_running_per_org: int) -> bool:
    """True when ``job_id`` is ``queued`` and its organization already runs ``max_running_per_org``
    jobs: then its ``enqueued_at`` is set to now (the caller sends it again after a countdown, and the
    queued sweep leaves it alone meanwhile). False otherwise (no cap, below it, or not queued)."""
    if max_running_per_org <= 0 or org_running_jobs(session, job_id) < max_running_per_org:
        return False
    return _update(session, Job.id == job_id, Job.status == st.QUEUED, enqueued_at=db_now(session)) == 1


def org_running_jobs(session: Session, job_id: str) -> int:
    """How many jobs of ``job_id``'s organization are running, ``job_id`` excluded (0 when absent)."""
    org = select(Job.organization_id).where(Job.id == job_id).scalar_subquery()
    stmt = select(func.count(Job.id)).where(Job.organization_id == org, Job.status == st.RUNNING, Job.id != job_id)
    return int(session.scalar(stmt) or 0)


def heartbeat(session: Session, job_id: str, worker_id: str, lease_s: float, steps_completed: int | None = None) -> str:
    """Extend the lease (and record progress) while ``worker_id`` owns the job; return its status.

    The returned status is the control flag: ``running`` -> go on; ``cancelled`` -> stop;
    ``paused`` -> checkpoint and :func:`release_job`. Raises :class:`LeaseLost` when another worker
    owns the job or it was re-queued by the reaper; then the caller must stop without writing.
    """
    now = db_now(session)
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
    (worker shutdown, an infrastructure fault; ``enqueued_at`` is set, the caller re-enqueues). Clears
    the lease and takes back the claim's ``attempt`` (a worker that stopped cleanly is not a failed
    attempt). Never overrides a finished/cancelled job, and ``queued`` never overrides ``paused``.
    Returns False when ``worker_id`` did not own the job."""
    if status not in (st.PAUSED, st.QUEUED):
        raise ValueError(f"release status must be 'paused' or 'queued', got {status!r}")
    allowed = {st.RUNNING, st.QUEUED} | ({st.PAUSED} if status == st.PAUSED else set())
    owned = Job.id == job_id, Job.lease_owner == worker_id
    at_least = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest  # scalar max of two
    values: dict[str, Any] = {"status": status, "attempt": at_least(Job.attempt - 1, 0), **_NO_LEASE}
    if status == st.QUEUED:
        values["enqueued_at"] = db_now(session)
    if _update(session, *owned, Job.status.in_(allowed), **values) == 1:
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
    values: dict[str, Any] = {"status": status, "finished_at": int(db_now(session)), "error": error, **_NO_LEASE}
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
    """Re-queue running jobs whose lease expired before ``now`` (default: the database's clock; a dead
    worker): status ``queued``, lease cleared, ``enqueued_at`` set, event "Job restarted". Returns the
    ids of the jobs this call re-queued (the caller re-enqueues them); concurrent reapers never both
    take the same job."""
    if isinstance(now, datetime):
        now = now.timestamp()
    now = db_now(session) if now is None else float(now)
    expired = Job.status == st.RUNNING, Job.lease_expires_at < now
    reaped = []
    for job_id, owner in session.execute(select(Job.id, Job.lease_owner).where(*expired)).all():
        values = {"status": st.QUEUED, "enqueued_at": db_now(session), **_NO_LEASE}
        if _update(session, Job.id == job_id, *expired, **values) == 1:
            add_event(
                session,
                job_id,
                "Job restarted: its worker stopped renewing the lease; resuming from the last checkpoint",
                level="warn",
                data={"reason": "lease_expired", "previous_worker": owner},
            )
            reaped.append(job_id)
    return reaped


def requeue_stale_queued(session: Session, older_than_s: float) -> list[str]:
    """Jobs ``queued`` whose last send to the GPU queue (``coalesce(enqueued_at, created_at)``) is more
    than ``older_than_s`` seconds old by the database's clock: their ``enqueued_at`` is set to now and
    their ids returned, for the caller to enqueue again (a job created just before a crash, or queued
    in a Redis that lost its data). Concurrent sweeps never both take the same job."""
    cutoff = db_now(session) - older_than_s
    stale = Job.status == st.QUEUED, func.coalesce(Job.enqueued_at, Job.created_at) < cutoff
    taken = []
    for (job_id,) in session.execute(select(Job.id).where(*stale).order_by(Job.seq)).all():
        if _update(session, Job.id == job_id, *stale, enqueued_at=db_now(session)) == 1:
            taken.append(job_id)
    return taken
