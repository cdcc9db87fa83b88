"""Bring a database to the newest schema with Alembic (the embedded mode calls this at start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

#: ``migrations/`` beside the ``api`` package (repository root / Docker image root).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that needs no alembic.ini (the URL is passed as an attribute,
    so ``%`` in passwords needs no escaping)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade_to_head(url: str) -> None:
    """Apply every pending migration to the database at ``url`` (creating a SQLite file if needed).
    Idempotent: a database already at head is left unchanged."""
    command.upgrade(alembic_config(url), "head")


def downgrade_to_base(url: str) -> None:
    """Drop every table the migrations created (tests and teardown only)."""
    command.downgrade(alembic_config(url), "base")
