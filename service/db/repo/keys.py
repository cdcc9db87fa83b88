"""Organizations and API keys. A key is ``sk-pt-<prefix>-<secret>``; only the prefix (for lookup)
and the sha256 of the whole key are stored, never the key itself."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.base import new_id, now_s
from service.db.models import ApiKey, Organization

KEY_PREFIX = "sk-pt-"
_KEY_RE = re.compile(r"^sk-pt-([0-9a-f]{12})-[A-Za-z0-9_\-]{20,128}$")


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


def create_api_key(session: Session, org_name: str, key_name: str = "") -> tuple[str, str]:
    """Create a key for organization ``org_name`` (created if new). Returns ``(plaintext key, org id)``;
    the plaintext is shown once and cannot be recovered from the database."""
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
        )
    )
    session.flush()
    return key, org_id


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal of a valid, unrevoked key, else None (constant-time hash comparison)."""
    match = _KEY_RE.match(key or "")
    if match is None:
        return None
    digest = hash_key(key)
    stmt = (
        select(ApiKey, Organization)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .where(ApiKey.prefix == match.group(1), ApiKey.revoked_at.is_(None))
    )
    for api_key, org in session.execute(stmt).all():
        if hmac.compare_digest(api_key.key_hash, digest):
            return Principal(organization_id=org.id, organization_name=org.name, key_id=api_key.id)
    return None


def revoke_api_key(session: Session, key: str) -> bool:
    """Revoke the key (given in plaintext); True if an active key was revoked."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
        .values(revoked_at=now_s())
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
