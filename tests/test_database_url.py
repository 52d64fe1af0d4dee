"""Database URLs as users write them: ``postgresql://`` and ``postgres://`` use the installed driver
(psycopg2); a database or driver stoq cannot use is refused with a message naming what to write or
install, never a traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from helpers import CORPUS, PG_URL, database, pg_admin

Run = Callable[..., subprocess.CompletedProcess[bytes]]
DB = database("stoq_test_urls")


@pytest.fixture
def bare_pg() -> Iterator[str]:
    """A fresh database ``stoq_test_urls`` and its URL as a user writes it: ``postgresql://`` with no driver."""
    admin = pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB}"'))
    url = make_url(PG_URL).set(drivername="postgresql", database=DB)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_bare_postgres_urls_migrate_store_and_read_back(run_stoq: Run, bare_pg: str, scheme: str) -> None:
    url = scheme + bare_pg.removeprefix("postgresql")
    env = {"STOQ_DATABASE_URL": url}
    upgraded = run_stoq("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr.decode()
    scanned = run_stoq("scan", str(CORPUS / "test.txt"), env=env)
    assert scanned.returncode == 0, scanned.stderr.decode()
    doc = json.loads(scanned.stdout)
    again = run_stoq("results", doc["scan_id"], env=env)
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout) == [doc]


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql+asyncpg://stoq@127.0.0.1:1/db",
     "the database driver 'asyncpg' in postgresql+asyncpg://stoq@127.0.0.1:1/db is not supported: write "
     "postgresql:// (stoq uses psycopg2, from psycopg2-binary)"),
    ("postgres+psycopg://stoq:secret@127.0.0.1:1/db",
     "the database driver 'psycopg' in postgres+psycopg://stoq:***@127.0.0.1:1/db is not supported: write "
     "postgresql:// (stoq uses psycopg2, from psycopg2-binary)"),
    ("mysql://stoq@127.0.0.1:1/db",
     "unsupported database 'mysql' in mysql://stoq@127.0.0.1:1/db: use SQLite (sqlite:///PATH) or PostgreSQL "
     "(postgresql://USER@HOST/DB)"),
])
def test_unusable_database_urls_are_refused_by_name(run_stoq: Run, tmp_path: Path, url: str, message: str) -> None:
    for command in (["db", "upgrade"], ["scan", str(CORPUS / "test.txt")]):
        proc = run_stoq(*command, env={"STOQ_DATABASE_URL": url})
        assert proc.returncode == 5, (command, proc.stderr.decode())
        assert proc.stderr.decode().splitlines() == [f"stoq: {message}"], command
