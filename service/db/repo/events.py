"""Job events and checkpoints (written by the worker, listed by the gateway)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.errors import LeaseLost
from service.db.models import Checkpoint, Event, Job
from service.db.repo._common import paginate, snapshot
from service.db.repo.naming import default_model_name

EVENT_LEVELS = ("info", "warn", "error")
EVENT_TYPES = ("message", "metrics")


def add_event(
    session: Session,
    job_id: str,
    message: str,
    level: str = "info",
    type: str = "message",  # the OpenAI field name
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append an event to the job's log (ordered by insertion, not by clock); returns its snapshot."""
    if level not in EVENT_LEVELS:
        raise ValueError(f"level must be one of {EVENT_LEVELS}, got {level!r}")
    if type not in EVENT_TYPES:
        raise ValueError(f"type must be one of {EVENT_TYPES}, got {type!r}")
    event = Event(
        id=new_id("ft-event-"), job_id=job_id, created_at=now_s(), level=level, message=message, type=type, data=data
    )
    session.add(event)
    session.flush()
    return snapshot(event)


def list_events(
    session: Session, job_id: str, *, after: str | None = None, limit: int = 20
) -> tuple[list[dict[str, Any]], bool]:
    """The job's events newest first, strictly after the cursor; returns ``(events, has_more)``."""
    rows, has_more = paginate(session, Event, [Event.job_id == job_id], after, limit)
    return [snapshot(r) for r in rows], has_more


def add_checkpoint(
    session: Session,
    job_id: str,
    step_number: int,
    metrics: dict[str, Any],
    path: str,
    fine_tuned_model_checkpoint: str | None = None,
    *,
    sha256: str | None = None,
    lease_owner: str | None = None,
) -> dict[str, Any]:
    """Record a checkpoint the worker has already written atomically at ``path``.

    ``metrics`` gets ``step`` filled in; ``fine_tuned_model_checkpoint`` defaults to
    ``ft:<base>:<org>:<suffix>:<job id>:ckpt-step-<n>``; ``sha256`` is that of the checkpoint's
    manifest. With ``lease_owner`` the row is written only while that worker holds the job's lease
    (the job's row is locked by a conditional UPDATE in the same transaction, so a reaper cannot take
    the job in between); otherwise :class:`LeaseLost` is raised and nothing is written.
    Returns the checkpoint's snapshot.
    """
    if lease_owner is not None:
        owned = update(Job).where(Job.id == job_id, Job.lease_owner == lease_owner).values(lease_owner=lease_owner)
        if session.execute(owned.execution_options(synchronize_session=False)).rowcount != 1:  # type: ignore[attr-defined]
            row = session.execute(select(Job.lease_owner, Job.status).where(Job.id == job_id)).one_or_none()
            raise LeaseLost(job_id, lease_owner, *(row or (None, None)))
    name = fine_tuned_model_checkpoint or default_model_name(session, job_id, checkpoint_step=step_number)
    checkpoint = Checkpoint(
        id=new_id("ftckpt_"),
        job_id=job_id,
        step_number=step_number,
        metrics={"step": step_number, **(metrics or {})},
        path=str(path),
        fine_tuned_model_checkpoint=name,
        created_at=now_s(),
        sha256=sha256,
    )
    session.add(checkpoint)
    session.flush()
    return snapshot(checkpoint)


def _newest_first(job_id: str):
    return (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step_number.desc(), Checkpoint.seq.desc())
    )


def recent_checkpoints(session: Session, job_id: str, limit: int = 10) -> list[dict[str, Any]]:
    """The job's ``limit`` checkpoints with the highest steps, highest first (the newest among equals):
    the order in which a resuming worker tries them."""
    return [snapshot(r) for r in session.scalars(_newest_first(job_id).limit(limit))]


def prune_checkpoints(session: Session, job_id: str, keep: int) -> list[str]:
    """Delete the rows of all but the job's ``keep`` newest checkpoints (by step); returns the paths of
    the deleted rows that no kept row shares, for the caller to remove from disk after the commit."""
    rows = list(session.scalars(_newest_first(job_id)))
    kept = {r.path for r in rows[:keep]}
    paths = []
    for row in rows[keep:]:
        session.delete(row)
        if row.path not in kept:
            paths.append(row.path)
    session.flush()
    return paths


def latest_checkpoint(session: Session, job_id: str) -> dict[str, Any] | None:
    """The job's checkpoint with the highest step (the newest among equals), or None."""
    row = session.scalars(_newest_first(job_id).limit(1)).first()
    return None if row is None else snapshot(row)


def list_checkpoints(
    session: Session, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[dict[str, Any]], bool]:
    """The job's checkpoints newest first, strictly after the cursor; returns ``(checkpoints, has_more)``."""
    rows, has_more = paginate(session, Checkpoint, [Checkpoint.job_id == job_id], after, limit)
    return [snapshot(r) for r in rows], has_more


def delete_checkpoints(session: Session, job_id: str) -> int:
    """Delete every checkpoint row of the job (its model's artifacts were deleted: nothing to list or
    resume from); returns how many."""
    result = session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
