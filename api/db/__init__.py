"""Persistence shared by the gateway and the worker (SQLAlchemy 2; imports no FastAPI, no torch).

- :mod:`api.db.models`: the ORM tables (works on SQLite and PostgreSQL).
- :mod:`api.db.session`: engine and session factories, :func:`~api.db.session.session_scope`.
- :mod:`api.db.repo`: every query the gateway and the worker run; returns plain dicts.
- :mod:`api.db.migrate`: ``upgrade_to_head(url)`` (Alembic).
"""
