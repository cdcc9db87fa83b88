"""Job events and checkpoints (written by the worker, listed by the gateway)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.models import Checkpoint, Event
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
) -> dict[str, Any]:
    """Record a checkpoint the worker has already written atomically at ``path``.

    ``metrics`` gets ``step`` filled in; ``fine_tuned_model_checkpoint`` defaults to
    ``ft:<base>:<org>:<suffix>:<job id>:ckpt-step-<n>``. Returns the checkpoint's snapshot.
    """
    name = fine_tuned_model_checkpoint or default_model_name(session, job_id, checkpoint_step=step_number)
    checkpoint = Checkpoint(
        id=new_id("ftckpt_"),
        job_id=job_id,
        step_number=step_number,
        metrics={"step": step_number, **(metrics or {})},
        path=str(path),
        fine_tuned_model_checkpoint=name,
        created_at=now_s(),
    )
    session.add(checkpoint)
    session.flush()
    return snapshot(checkpoint)


def latest_checkpoint(session: Session, job_id: str) -> dict[str, Any] | None:
    """The job's checkpoint with the highest step (the newest among equals), or None."""
    stmt = (
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step_number.desc(), Checkpoint.seq.desc())
        .limit(1)
    )
    row = session.scalars(stmt).first()
    return None if row is None else snapshot(row)


def list_checkpoints(
    session: Session, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[dict[str, Any]], bool]:
    """The job's checkpoints newest first, strictly after the cursor; returns ``(checkpoints, has_more)``."""
    rows, has_more = paginate(session, Checkpoint, [Checkpoint.job_id == job_id], after, limit)
    return [snapshot(r) for r in rows], has_more
