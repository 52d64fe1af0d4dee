"""Alembic migrations of the result store (see :func:`stoq.store.upgrade` and :func:`stoq.store.alembic_config`).

A new migration must also bump :data:`HEAD_REVISION` below (a test checks it). It lives here, away from
SQLAlchemy, so that the CLI can check a SQLite store's revision without importing SQLAlchemy.
"""

#: The newest migration in ``versions/``.
HEAD_REVISION = "0001"
