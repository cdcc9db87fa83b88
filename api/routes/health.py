"""Liveness and readiness probes (no authentication)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness (the database answers)")
def readyz(session: SessionDep) -> Any:
    """The database answers (503 otherwise)."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}
