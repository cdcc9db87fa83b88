"""Job CRUD and the user's state changes (cancel / pause / resume) as the gateway needs them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.db.base import new_id, now_f, now_s
from service.db.errors import InvalidTransition, ObjectNotFound
from service.db.models import Checkpoint, Event, Job
from service.db.repo import status as st
from service.db.repo._common import paginate, snapshot
from service.db.repo.events import add_event
from service.errors import BadRequest

JOB_ID_PREFIX = "ftjob-"
#: What a metadata key may be, in a job and in a ``metadata[key]`` filter (it becomes a JSON path in SQL).
METADATA_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_METADATA_VALUE = 512


def check_metadata_key(key: str, param: str) -> None:
    """Raise :class:`BadRequest` (``param``, code ``invalid_metadata_key``) unless ``key`` matches
    :data:`METADATA_KEY_PATTERN`: letters, digits, ``_ . -``, 1 to 64 characters."""
    if not isinstance(key, str) or not METADATA_KEY_PATTERN.match(key):
        raise BadRequest(
            f"Invalid metadata key {str(key)[:64]!r}: use 1 to 64 letters, digits, '_', '.' or '-'.",
            param=param,
            code="invalid_metadata_key",
        )


def create_job(
    session: Session,
    *,
    organization_id: str,
    model: str,
    method: dict[str, Any],
    hyperparameters: dict[str, Any],
    seed: int,
    total_steps: int | None = None,
    training_file: str | None = None,
    validation_file: str | None = None,
    metadata: dict[str, str] | None = None,
    suffix: str | None = None,
) -> dict[str, Any]:
    """Insert a ``queued`` job with a "Job created" event and return its snapshot (not committed);
    ``enqueued_at`` is now (the caller sends it to the GPU queue). Raises :class:`BadRequest` for a
    metadata key outside :data:`METADATA_KEY_PATTERN`."""
    for key in metadata or {}:
        check_metadata_key(key, "metadata")
    job = Job(
        id=new_id(JOB_ID_PREFIX),
        organization_id=organization_id,
        model=model,
        status=st.QUEUED,
        created_at=now_s(),
        hyperparameters=hyperparameters,
        method=method,
        training_file=training_file,
        validation_file=validation_file,
        seed=seed,
        user_metadata=metadata,
        suffix=suffix,
        steps_completed=0,
        total_steps=total_steps,
        attempt=0,
        enqueued_at=now_f(),
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "Job created", data={"model": model, "total_steps": total_steps})
    return snapshot(job)


def load_job(session: Session, job_id: str, organization_id: str | None = None) -> Job | None:
    """The job row, freshly read from the database (``organization_id`` scopes the lookup)."""
    stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if organization_id is not None:
        stmt = stmt.where(Job.organization_id == organization_id)
    return session.scalars(stmt).one_or_none()


def get_job(session: Session, job_id: str, organization_id: str | None = None) -> dict[str, Any] | None:
    """Snapshot of the job, or None if it does not exist (in that organization)."""
    job = load_job(session, job_id, organization_id)
    return None if job is None else snapshot(job)


def require_job(session: Session, job_id: str, organization_id: str | None = None) -> dict[str, Any]:
    """Snapshot of the job; raises :class:`ObjectNotFound` if absent (or another organization's)."""
    job = get_job(session, job_id, organization_id)
    if job is None:
        raise ObjectNotFound("fine-tuning job", job_id, param="fine_tuning_job_id")
    return job


def list_jobs(
    session: Session,
    organization_id: str,
    *,
    after: str | None = None,
    limit: int = 20,
    metadata: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The organization's jobs newest first, after the cursor, matching every ``metadata`` pair.
    Raises :class:`BadRequest` (``param`` ``metadata[<key>]``) for a key outside
    :data:`METADATA_KEY_PATTERN` or a value over :data:`MAX_METADATA_VALUE` characters, before any SQL."""
    filters = [Job.organization_id == organization_id]
    for key, value in (metadata or {}).items():
        param = f"metadata[{key[:64]}]"
        check_metadata_key(key, param)
        if len(value) > MAX_METADATA_VALUE:
            raise BadRequest(f"A metadata value has at most {MAX_METADATA_VALUE} characters.", param=param)
        filters.append(Job.user_metadata[key].as_string() == value)
    rows, has_more = paginate(session, Job, filters, after, limit)
    return [snapshot(r) for r in rows], has_more


def _transition(
    session: Session, organization_id: str, job_id: str, allowed: frozenset[str], action: str, values: dict[str, Any]
) -> dict[str, Any]:
    require_job(session, job_id, organization_id)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.organization_id == organization_id, Job.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidTransition(job_id, action, require_job(session, job_id)["status"])
    return require_job(session, job_id)


def cancel_job(session: Session, organization_id: str, job_id: str) -> dict[str, Any]:
    """Set ``cancelled`` now (the worker stops at its next heartbeat/step). Raises
    :class:`InvalidTransition` for a job already succeeded, failed or cancelled."""
    job = _transition(
        session, organization_id, job_id, st.CANCELLABLE, "cancelled", {"status": st.CANCELLED, "finished_at": now_s()}
    )
    add_event(session, job_id, "Job cancelled")
    return job


def pause_job(session: Session, organization_id: str, job_id: str) -> dict[str, Any]:
    """Set ``paused``; a running worker checkpoints and releases the job. Only from queued/running."""
    was_running = require_job(session, job_id, organization_id)["status"] == st.RUNNING
    job = _transition(session, organization_id, job_id, st.PAUSABLE, "paused", {"status": st.PAUSED})
    message = "Pause requested; the worker saves a checkpoint and releases the job" if was_running else "Job paused"
    add_event(session, job_id, message, data={"step": job["steps_completed"]})
    return job


def resume_job(session: Session, organization_id: str, job_id: str) -> dict[str, Any]:
    """Set a paused job back to ``queued`` with ``enqueued_at`` now (the caller enqueues it). Raises a retryable
    :class:`InvalidTransition` while the pausing worker still holds a live lease."""
    job = require_job(session, job_id, organization_id)
    if job["status"] != st.PAUSED:
        raise InvalidTransition(job_id, "resumed", job["status"], detail="Only a paused job can be resumed.")
    now = now_f()
    if job["lease_owner"] is not None and (job["lease_expires_at"] or 0) > now:
        raise InvalidTransition(
            job_id, "resumed yet", "paused", retryable=True, detail="The worker is still saving its checkpoint."
        )
    job = _transition(
        session,
        organization_id,
        job_id,
        frozenset({st.PAUSED}),
        "resumed",
        {"status": st.QUEUED, "lease_owner": None, "lease_expires_at": None, "enqueued_at": now_f()},
    )
    add_event(session, job_id, "Job resumed", data={"step": job["steps_completed"]})
    return job


def fail_job(session: Session, job_id: str, code: str, message: str) -> None:
    """Mark a not-yet-finished job failed with an error (e.g. it could not be enqueued)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(st.TERMINAL))
        .values(status=st.FAILED, finished_at=now_s(), error={"code": code, "message": message, "param": None})
        .execution_options(synchronize_session=False)
    )
    add_event(session, job_id, f"Job failed: {message}", level="error")


def fine_tuned_models(session: Session, organization_id: str) -> list[dict[str, Any]]:
    """The organization's succeeded jobs that produced a model whose artifacts still exist, newest first."""
    stmt = (
        select(Job)
        .where(
            Job.organization_id == organization_id,
            Job.status == st.SUCCEEDED,
            Job.fine_tuned_model.is_not(None),
            Job.artifacts_deleted_at.is_(None),
        )
        .order_by(Job.seq.desc())
    )
    return [snapshot(j) for j in session.scalars(stmt)]


def job_for_model(session: Session, organization_id: str, fine_tuned_model: str) -> dict[str, Any] | None:
    """The succeeded job that produced ``fine_tuned_model`` in this organization, if any and if its
    artifacts were not deleted (a deleted model is gone: 404 everywhere)."""
    stmt = select(Job).where(
        Job.organization_id == organization_id,
        Job.fine_tuned_model == fine_tuned_model,
        Job.status == st.SUCCEEDED,
        Job.artifacts_deleted_at.is_(None),
    )
    job = session.scalars(stmt).first()
    return None if job is None else snapshot(job)


def checkpoint_paths(session: Session, job_id: str) -> list[str]:
    """Where the job's checkpoints are stored (as recorded in their rows)."""
    return list(session.scalars(select(Checkpoint.path).where(Checkpoint.job_id == job_id)))


def mark_artifacts_deleted(session: Session, job_id: str, now: int | None = None) -> bool:
    """Record that the job's stored artifacts are (being) deleted: its model leaves ``/v1/models`` and
    cannot be used. True if this call marked it (False: already marked)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.artifacts_deleted_at.is_(None))
        .values(artifacts_deleted_at=now_s() if now is None else now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def delete_job(session: Session, organization_id: str, job_id: str) -> dict[str, Any]:
    """Delete a finished job (succeeded, failed or cancelled) with its events and checkpoint rows;
    returns its last snapshot with ``checkpoint_paths`` (the caller removes the stored artifacts).
    Raises :class:`ObjectNotFound` (absent or another organization's) or :class:`InvalidTransition`
    (409: the job is not finished, cancel it first; retryable while the worker of a cancelled job
    still holds its lease, since it may be writing a last checkpoint)."""
    job = require_job(session, job_id, organization_id)
    if job["status"] not in st.TERMINAL:
        raise InvalidTransition(job_id, "deleted", job["status"], detail="Cancel it first, or wait until it ends.")
    if job["lease_owner"] is not None and (job["lease_expires_at"] or 0) > now_f():
        raise InvalidTransition(
            job_id, "deleted yet", job["status"], retryable=True, detail="Its worker is still stopping; retry shortly."
        )
    job["checkpoint_paths"] = checkpoint_paths(session, job_id)
    session.execute(delete(Event).where(Event.job_id == job_id))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id))
    result = session.execute(
        delete(Job).where(Job.id == job_id, Job.organization_id == organization_id, Job.status.in_(st.TERMINAL))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]  # resumed or changed meanwhile
        raise InvalidTransition(job_id, "deleted", require_job(session, job_id)["status"])
    return job


def jobs_past_retention(session: Session, finished_before: int) -> list[dict[str, Any]]:
    """Finished jobs (any organization) that ended before ``finished_before`` and still have artifacts."""
    stmt = select(Job).where(
        Job.status.in_(st.TERMINAL),
        Job.finished_at.is_not(None),
        Job.finished_at < finished_before,
        Job.artifacts_deleted_at.is_(None),
    )
    return [snapshot(j) for j in session.scalars(stmt.order_by(Job.seq))]
