"""Uploaded files (privatized training data). Contents live on disk at ``path``; rows hold metadata."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.errors import ObjectNotFound
from service.db.models import File, Job
from service.db.repo import status as st
from service.db.repo._common import paginate, snapshot

FILE_ID_PREFIX = "file-"


def new_file_id() -> str:
    """A fresh ``file-...`` id (callers write the content under it before :func:`create_file`)."""
    return new_id(FILE_ID_PREFIX)


def create_file(
    session: Session,
    *,
    file_id: str,
    organization_id: str,
    filename: str,
    purpose: str,
    size: int,
    path: str,
    manifest: dict[str, Any] | None = None,
    expires_at: int | None = None,
) -> dict[str, Any]:
    """Record an uploaded file whose content is already stored at ``path``; returns its snapshot."""
    row = File(
        id=file_id,
        organization_id=organization_id,
        bytes=size,
        filename=filename,
        purpose=purpose,
        status="processed",
        path=path,
        manifest=manifest,
        created_at=now_s(),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return snapshot(row)


def get_file(session: Session, file_id: str, organization_id: str | None = None) -> dict[str, Any] | None:
    """Snapshot of the file, or None if absent (or another organization's when scoped)."""
    stmt = select(File).where(File.id == file_id)
    if organization_id is not None:
        stmt = stmt.where(File.organization_id == organization_id)
    row = session.scalars(stmt).one_or_none()
    return None if row is None else snapshot(row)


def require_file(session: Session, file_id: str, organization_id: str | None = None, param: str = "file_id") -> dict:
    """Snapshot of the file; raises :class:`ObjectNotFound` if absent (or another organization's)."""
    row = get_file(session, file_id, organization_id)
    if row is None:
        raise ObjectNotFound("file", file_id, param=param)
    return row


def list_files(
    session: Session, organization_id: str, *, after: str | None = None, limit: int = 10000, purpose: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """The organization's files newest first, strictly after the cursor; returns ``(files, has_more)``."""
    filters = [File.organization_id == organization_id]
    if purpose:
        filters.append(File.purpose == purpose)
    rows, has_more = paginate(session, File, filters, after, limit)
    return [snapshot(r) for r in rows], has_more


def delete_file(session: Session, file_id: str, organization_id: str) -> dict[str, Any]:
    """Delete the file's row and return its last snapshot (the caller removes the content)."""
    row = require_file(session, file_id, organization_id)
    session.execute(delete(File).where(File.id == file_id))
    return row


def files_older_than(session: Session, created_before: int) -> list[dict[str, Any]]:
    """Files (any organization) uploaded before ``created_before`` that no unfinished job uses."""
    in_use = select(Job.id).where(
        Job.status.not_in(st.TERMINAL),
        or_(Job.training_file == File.id, Job.validation_file == File.id),
    )
    stmt = select(File).where(File.created_at < created_before, ~in_use.exists()).order_by(File.seq)
    return [snapshot(r) for r in session.scalars(stmt)]
