"""Alembic migrations build exactly the ORM schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from service.db import repo
from service.db.migrate import downgrade_to_base, upgrade_to_head
from service.db.models import Base
from service.db.session import make_engine, make_session_factory, session_scope

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = {
    "organizations", "api_keys", "jobs", "job_events", "job_checkpoints", "files", "alembic_version",
    "idempotency_keys", "webhook_endpoints", "webhook_deliveries",
}  # fmt: skip


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def _exercise(url: str) -> None:
    """Claim/finish round trip on the migrated schema (JSON columns, autoincrement seq, conditional updates)."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as s:
            _, org = repo.create_api_key(s, "org-" + uuid.uuid4().hex[:6])
            job = repo.create_job(
                s, organization_id=org, model="minilm-l6", method={"type": "privtune"}, hyperparameters={}, seed=1,
                metadata={"team": "x"},
            )  # fmt: skip
            second = repo.create_job(s, organization_id=org, model="minilm-l6", method={}, hyperparameters={}, seed=2)
        with session_scope(factory) as s:
            assert repo.claim_job(s, job["id"], "w", 60)["status"] == "running"
            assert repo.finish_job(s, job["id"], "w", "succeeded")
            jobs, _ = repo.list_jobs(s, org, metadata={"team": "x"})
            assert [j["id"] for j in jobs] == [job["id"]]
            assert [j["id"] for j in repo.list_jobs(s, org)[0]] == [second["id"], job["id"]]
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'db.sqlite3'}"
    upgrade_to_head(url)
    upgrade_to_head(url)  # idempotent
    assert set(inspect(create_engine(url)).get_table_names()) == TABLES
    assert _diff(url) == []
    _exercise(url)
    downgrade_to_base(url)
    assert set(inspect(create_engine(url)).get_table_names()) == {"alembic_version"}


@pytest.fixture
def pg_url():
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not available here"
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}")
    schema = "pt_test_" + uuid.uuid4().hex[:10]
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.integration
def test_postgres_upgrade_matches_models_and_downgrades(pg_url):
    upgrade_to_head(pg_url)
    upgrade_to_head(pg_url)
    engine = create_engine(pg_url)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()
    assert _diff(pg_url) == []
    _exercise(pg_url)
    downgrade_to_base(pg_url)
    engine = create_engine(pg_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
