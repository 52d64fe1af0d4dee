"""Alembic migrations of the result store (see :func:`stoq.store.upgrade` and :func:`stoq.store.alembic_config`).

A new migration must also bump :data:`HEAD_REVISION` below and regenerate ``sqlite_head.sql`` (tests
check both: ``python -m stoq.store dump-sqlite-schema > stoq/migrations/sqlite_head.sql``). They live
here, away from SQLAlchemy, so that the CLI can check and create a SQLite store without importing
SQLAlchemy or Alembic.
"""

from __future__ import annotations

from pathlib import Path

#: The newest migration in ``versions/``.
HEAD_REVISION = "0005"

#: The SQLite schema at ``HEAD_REVISION``, as Alembic creates it: one statement per ``;`` line end.
SQLITE_HEAD = Path(__file__).resolve().parent / "sqlite_head.sql"


def sqlite_head_statements() -> list[str]:
    """The statements of ``sqlite_head.sql`` (tables and indexes; not the ``alembic_version`` row)."""
    lines = SQLITE_HEAD.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith("--"))
    return [part.strip() for part in text.split(";\n") if part.strip()]
