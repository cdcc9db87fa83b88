"""Organizations and API keys. A key is ``sk-pt-<prefix>-<secret>``; only the prefix (for lookup)
and the sha256 of the whole key are stored, never the key itself. A key may expire (``expires_at``);
its last use is recorded at most once per :data:`LAST_USED_RESOLUTION_S` (not a write per request)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.errors import ObjectNotFound
from service.db.models import ApiKey, Organization

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-pt-"
_KEY_RE = re.compile(r"^sk-pt-([0-9a-f]{12})-[A-Za-z0-9_\-]{20,128}$")
#: ``last_used_at`` is written when the stored value is older than this (seconds).
LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's organization."""

    organization_id: str
    organization_name: str
    key_id: str


def hash_key(key: str) -> str:
    """Hex sha256 of the whole key (what the database stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def get_or_create_organization(session: Session, name: str) -> str:
    """Id of the organization called ``name``, creating it if needed."""
    org = session.scalars(select(Organization).where(Organization.name == name)).one_or_none()
    if org is None:
        org = Organization(id=new_id("org-"), name=name, created_at=now_s())
        session.add(org)
        session.flush()
    return org.id


def create_api_key(
    session: Session, org_name: str, key_name: str = "", *, expires_at: int | None = None
) -> tuple[str, str]:
    """Create a key for organization ``org_name`` (created if new), valid until ``expires_at`` (unix
    seconds; None: no expiry). Returns ``(plaintext key, org id)``; the plaintext is shown once and
    cannot be recovered from the database."""
    org_id = get_or_create_organization(session, org_name)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}-{secrets.token_urlsafe(32)}"
    session.add(
        ApiKey(
            id=new_id("key-"),
            organization_id=org_id,
            name=key_name,
            prefix=prefix,
            key_hash=hash_key(key),
            created_at=now_s(),
            expires_at=expires_at,
        )
    )
    session.flush()
    return key, org_id


def authenticate(session: Session, key: str, *, now: int | None = None) -> Principal | None:
    """The principal of a valid key (well-formed, unrevoked, not expired at ``now``), else None
    (constant-time hash comparison).

    Records the key's ``last_used_at`` when the stored value is missing or older than
    :data:`LAST_USED_RESOLUTION_S`, on a connection of its own committed at once (so a read-only
    request records it too; the caller's transaction is untouched). A failure to record is logged
    and does not refuse the key."""
    match = _KEY_RE.match(key or "")
    if match is None:
        return None
    now = now_s() if now is None else now
    digest = hash_key(key)
    stmt = (
        select(ApiKey, Organization)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .where(
            ApiKey.prefix == match.group(1),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
    )
    for api_key, org in session.execute(stmt).all():
        if hmac.compare_digest(api_key.key_hash, digest):
            if api_key.last_used_at is None or api_key.last_used_at <= now - LAST_USED_RESOLUTION_S:
                _record_use(session, api_key.id, now)
            return Principal(organization_id=org.id, organization_name=org.name, key_id=api_key.id)
    return None


def _record_use(session: Session, key_id: str, now: int) -> None:
    """Set ``last_used_at = now`` unless another request recorded a use within the resolution."""
    stmt = (
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION_S),
        )
        .values(last_used_at=now)
    )
    try:
        with session.get_bind().engine.connect() as conn:  # its own connection, whatever the session is bound to
            conn.execute(stmt)
            conn.commit()
    except SQLAlchemyError as exc:  # bookkeeping only: the key stays valid
        log.warning("could not record the use of key %s: %s", key_id, exc)


def redacted(prefix: str) -> str:
    """How a key is shown after creation: ``sk-pt-<prefix>-…`` (the secret part is never stored)."""
    return f"{KEY_PREFIX}{prefix}-…"


def _key_view(api_key: ApiKey, org: Organization) -> dict[str, Any]:
    return {
        "id": api_key.id,
        "name": api_key.name,
        "organization": org.name,
        "organization_id": org.id,
        "key": redacted(api_key.prefix),
        "created_at": api_key.created_at,
        "expires_at": api_key.expires_at,
        "last_used_at": api_key.last_used_at,
        "revoked_at": api_key.revoked_at,
    }


def list_api_keys(session: Session, org_name: str | None = None) -> list[dict[str, Any]]:
    """Every key (of organization ``org_name`` if given), oldest first, redacted: id, name,
    organization, ``sk-pt-<prefix>-…``, created, expires, last used and revoked times; never the
    secret or its hash."""
    stmt = select(ApiKey, Organization).join(Organization, Organization.id == ApiKey.organization_id)
    if org_name is not None:
        stmt = stmt.where(Organization.name == org_name)
    rows = session.execute(stmt.order_by(ApiKey.created_at, ApiKey.id)).all()
    return [_key_view(api_key, org) for api_key, org in rows]


def revoke_api_key_by_id(session: Session, key_id: str, *, now: int | None = None) -> dict[str, Any]:
    """Revoke the key with id ``key_id`` and return its redacted view; revoking a revoked key keeps
    its first revocation time. Raises :class:`ObjectNotFound` for an unknown id."""
    row = session.execute(
        select(ApiKey, Organization)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .where(ApiKey.id == key_id)
    ).one_or_none()
    if row is None:
        raise ObjectNotFound("API key", key_id, param="key_id")
    api_key, org = row
    if api_key.revoked_at is None:
        api_key.revoked_at = now_s() if now is None else now
        session.flush()
    return _key_view(api_key, org)


def revoke_api_key(session: Session, key: str) -> bool:
    """Revoke the key (given in plaintext); True if an active key was revoked."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=now_s())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
