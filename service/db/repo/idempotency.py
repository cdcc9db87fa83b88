"""Idempotency keys: the first response to a POST sent with ``Idempotency-Key``, per organization.

A row is claimed (``status_code`` None) before the request runs, completed with the response after it,
or released (deleted) when the response must not be replayed. :func:`claim` commits (a claim must be
visible to a concurrent retry at once); the other functions run in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.base import now_s
from service.db.models import IdempotencyKey

Outcome = Literal["claimed", "replay", "in_progress", "mismatch"]


@dataclass(frozen=True)
class Claim:
    """What :func:`claim` found: ``claimed`` (run the request, then :func:`complete` or :func:`release`),
    ``replay`` (``status_code`` and ``response`` are the stored first response), ``in_progress`` (the
    first request is still running) or ``mismatch`` (the key was used for another method, path or body)."""

    outcome: Outcome
    status_code: int | None = None
    response: dict[str, Any] | None = None


def claim(
    session: Session,
    *,
    organization_id: str,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    ttl_s: float,
    stale_after_s: float,
    now: int | None = None,
) -> Claim:
    """Claim ``(organization_id, key)`` for this request, or say why not.

    An entry older than ``ttl_s`` is forgotten (as if never sent); a claim still unanswered after
    ``stale_after_s`` (its request died with its process) is taken over. Commits its own change."""
    now = now_s() if now is None else now
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.organization_id == organization_id,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - ttl_s,
        )
    )
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.organization_id == organization_id,
            IdempotencyKey.key == key,
            IdempotencyKey.status_code.is_(None),
            IdempotencyKey.created_at < now - stale_after_s,
        )
    )
    session.commit()
    row = IdempotencyKey(
        organization_id=organization_id,
        key=key,
        method=method,
        path=path,
        request_hash=request_hash,
        status_code=None,
        response=None,
        created_at=now,
    )
    session.add(row)
    try:
        session.commit()
        return Claim("claimed")
    except IntegrityError:
        session.rollback()
    existing = session.scalars(
        select(IdempotencyKey)
        .where(IdempotencyKey.organization_id == organization_id, IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if existing is None:  # released between our insert and our read: the client may simply retry
        return Claim("in_progress")
    if (existing.method, existing.path, existing.request_hash) != (method, path, request_hash):
        return Claim("mismatch")
    if existing.status_code is None:
        return Claim("in_progress")
    return Claim("replay", existing.status_code, existing.response)


def complete(session: Session, *, organization_id: str, key: str, status_code: int, response: dict[str, Any]) -> None:
    """Store the first response of a claimed key (later retries replay it)."""
    session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.organization_id == organization_id, IdempotencyKey.key == key)
        .values(status_code=status_code, response=response)
        .execution_options(synchronize_session=False)
    )


def release(session: Session, *, organization_id: str, key: str) -> None:
    """Forget an unanswered claim (the request failed in a way the client may retry)."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.organization_id == organization_id,
            IdempotencyKey.key == key,
            IdempotencyKey.status_code.is_(None),
        )
    )


def purge_expired(session: Session, ttl_s: float, now: int | None = None) -> int:
    """Delete every entry older than ``ttl_s`` seconds; returns how many were deleted."""
    now = now_s() if now is None else now
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - ttl_s))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
