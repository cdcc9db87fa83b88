"""Declarative base, constraint naming convention, ids and clock helpers."""

from __future__ import annotations

import secrets
import time

from sqlalchemy import BigInteger, Integer, MetaData
from sqlalchemy.orm import DeclarativeBase

#: Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Integer surrogate key that is strictly increasing on both backends (SQLite needs INTEGER for rowid).
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def new_id(prefix: str) -> str:
    """A fresh public id: ``prefix`` + 24 hex characters (e.g. ``ftjob-1f3a...``)."""
    return prefix + secrets.token_hex(12)


def now_s() -> int:
    """Current unix time in whole seconds (what the OpenAI objects carry)."""
    return int(time.time())


def now_f() -> float:
    """Current unix time with sub-second precision (leases and heartbeats)."""
    return time.time()
