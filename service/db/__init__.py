"""Persistence shared by the gateway and the worker (SQLAlchemy 2; imports no FastAPI, no torch).

- :mod:`service.db.models`: the ORM tables (works on SQLite and PostgreSQL).
- :mod:`service.db.session`: engine and session factories, :func:`~service.db.session.session_scope`.
- :mod:`service.db.repo`: every query the gateway and the worker run; returns plain dicts.
- :mod:`service.db.migrate`: ``upgrade_to_head(url)`` (Alembic).
"""
