"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel / pause / resume, delete, events, checkpoints.

``training_file`` is a required argument of the official client's ``create``; interactive
PrivTune jobs (``method.type = "privtune"``) are created without one by our SDK or raw HTTP.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import EnqueuerDep, PrincipalDep, SessionDep, SettingsDep
from api.job_spec import build_job
from api.limits import check_active_jobs
from api.retention import delete_artifacts
from api.schemas.jobs import JobCreate
from api.schemas.objects import (
    FineTuningJob,
    JobCheckpoint,
    JobDeleted,
    JobEvent,
    ListPage,
    checkpoint_object,
    event_object,
    job_object,
    page,
)
from service.db import repo
from service.db.repo import jobs as job_repo
from service.errors import ServiceUnavailable

log = logging.getLogger("api.jobs")
router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[k]=v`` pairs, read from the raw query string."""
    pairs = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            pairs[key[len("metadata[") : -1]] = value
    return pairs


@router.post("", response_model=FineTuningJob, summary="Create a fine-tuning job")
def create_job(
    body: JobCreate, principal: PrincipalDep, session: SessionDep, settings: SettingsDep, enqueue: EnqueuerDep
) -> Any:
    """Create a ``queued`` job and send it to the GPU queue (429 ``too_many_active_jobs`` beyond the
    organization's cap of queued + running jobs)."""
    check_active_jobs(session, principal.organization_id, settings)
    job = repo.create_job(session, **build_job(body, settings, session, principal.organization_id))
    session.commit()
    try:
        enqueue.job(job["id"])
    except Exception as exc:
        log.warning("could not enqueue %s: %s", job["id"], exc)
        repo.fail_job(session, job["id"], "queue_unavailable", "The job could not be queued; create it again.")
        session.commit()
        raise ServiceUnavailable(
            "The job queue is unavailable; retry shortly.", code="queue_unavailable", retry_after=2
        ) from exc
    return job_object(job)


@router.get("", response_model=ListPage[FineTuningJob], summary="List fine-tuning jobs")
def list_jobs(
    request: Request, principal: PrincipalDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> Any:
    """The organization's jobs, newest first; filter with ``metadata[key]=value``."""
    jobs, has_more = repo.list_jobs(
        session, principal.organization_id, after=after, limit=limit, metadata=_metadata_filter(request)
    )
    return page(jobs, has_more, job_object)


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJob, summary="Retrieve a fine-tuning job")
def retrieve_job(fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """One job of the organization (404 for another organization's)."""
    return job_object(repo.require_job(session, fine_tuning_job_id, principal.organization_id))


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJob, summary="Cancel a fine-tuning job")
def cancel_job(fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """Cancel now; the worker stops within one step. A finished job answers 409 (no retry)."""
    job = repo.cancel_job(session, principal.organization_id, fine_tuning_job_id)
    session.commit()
    return job_object(job)


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJob, summary="Pause a fine-tuning job")
def pause_job(fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep) -> Any:
    """Pause; a running worker saves a checkpoint and frees its GPU."""
    job = repo.pause_job(session, principal.organization_id, fine_tuning_job_id)
    session.commit()
    return job_object(job)


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJob, summary="Resume a paused fine-tuning job")
def resume_job(fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep, enqueue: EnqueuerDep) -> Any:
    """Queue a paused job again; it continues from its last checkpoint."""
    job = repo.resume_job(session, principal.organization_id, fine_tuning_job_id)
    session.commit()
    try:
        enqueue.job(fine_tuning_job_id)
    except Exception as exc:
        repo.pause_job(session, principal.organization_id, fine_tuning_job_id)
        session.commit()
        raise ServiceUnavailable(
            "The job queue is unavailable; retry shortly.", code="queue_unavailable", retry_after=2
        ) from exc
    return job_object(job)


@router.delete("/{fine_tuning_job_id}", response_model=JobDeleted, summary="Delete a finished fine-tuning job")
def delete_job(fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep, settings: SettingsDep) -> Any:
    """Delete a succeeded, failed or cancelled job with its events, checkpoints and every stored
    artifact (its model is gone too). A job not yet finished is 409: cancel it first."""
    deleted = job_repo.delete_job(session, principal.organization_id, fine_tuning_job_id)
    session.commit()  # the job and its model are gone before any file is touched
    delete_artifacts(settings, fine_tuning_job_id, deleted["checkpoint_paths"])
    return {"id": fine_tuning_job_id, "object": "fine_tuning.job", "deleted": True}


@router.get("/{fine_tuning_job_id}/events", response_model=ListPage[JobEvent], summary="List a job's events")
def list_events(
    fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> Any:
    """The job's events, newest first (default 20 per page)."""
    repo.require_job(session, fine_tuning_job_id, principal.organization_id)
    events, has_more = repo.list_events(session, fine_tuning_job_id, after=after, limit=limit)
    return page(events, has_more, event_object)


@router.get(
    "/{fine_tuning_job_id}/checkpoints", response_model=ListPage[JobCheckpoint], summary="List a job's checkpoints"
)
def list_checkpoints(
    fine_tuning_job_id: str, principal: PrincipalDep, session: SessionDep, after: str | None = None, limit: Limit = 10
) -> Any:
    """The job's checkpoints, newest first (default 10 per page)."""
    repo.require_job(session, fine_tuning_job_id, principal.organization_id)
    checkpoints, has_more = repo.list_checkpoints(session, fine_tuning_job_id, after=after, limit=limit)
    return page(checkpoints, has_more, checkpoint_object)
