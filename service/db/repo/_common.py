"""Helpers shared by the repository modules: snapshots and cursor pagination."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from service.db.errors import InvalidCursor
from service.db.models import Base

T = TypeVar("T", bound=Base)

#: Column attribute -> key in the snapshot dict (``metadata`` is reserved by SQLAlchemy).
_RENAMED = {"user_metadata": "metadata"}


def snapshot(row: Base) -> dict[str, Any]:
    """A plain dict of the row's columns (no ORM object escapes the repository)."""
    mapper = row.__mapper__
    return {_RENAMED.get(attr.key, attr.key): getattr(row, attr.key) for attr in mapper.column_attrs}


def paginate(
    session: Session,
    model: type[T],
    filters: Sequence[ColumnElement[bool]],
    after: str | None,
    limit: int,
) -> tuple[list[T], bool]:
    """Rows matching ``filters``, newest first (by ``seq``), strictly after the row with id ``after``.

    Returns ``(rows, has_more)``. Raises :class:`InvalidCursor` if ``after`` is not in the collection.
    """
    stmt = select(model).where(*filters)
    if after:
        after_seq = session.scalar(select(model.seq).where(model.id == after, *filters))  # type: ignore[attr-defined]
        if after_seq is None:
            raise InvalidCursor(after)
        stmt = stmt.where(model.seq < after_seq)  # type: ignore[attr-defined]
    rows = list(session.scalars(stmt.order_by(model.seq.desc()).limit(limit + 1)))  # type: ignore[attr-defined]
    return rows[:limit], len(rows) > limit
