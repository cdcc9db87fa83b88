"""Names of fine-tuned models and their checkpoints."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.errors import ObjectNotFound
from service.db.models import Job, Organization


def default_model_name(session: Session, job_id: str, checkpoint_step: int | None = None) -> str:
    """``ft:<base>:<org name>:<suffix>:<job id>`` (``:ckpt-step-<n>`` for a checkpoint)."""
    job = session.scalars(select(Job).where(Job.id == job_id)).one_or_none()
    if job is None:
        raise ObjectNotFound("fine-tuning job", job_id)
    org = session.get(Organization, job.organization_id)
    org_name = (org.name if org else job.organization_id).lower().replace(":", "-").replace(" ", "-")
    name = f"ft:{job.model}:{org_name}:{job.suffix or ''}:{job.id}"
    return name if checkpoint_step is None else f"{name}:ckpt-step-{checkpoint_step}"
