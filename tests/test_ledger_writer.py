"""The submitting client's ledger writer (``stoq.ledger_writer``): on PostgreSQL it writes, with
psycopg2 alone, the rows ``stoq.ledger.record`` writes through SQLAlchemy; elsewhere it is that."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
from sqlalchemy import select, text

from helpers import PG_URL, pg_admin
from stoq import ledger
from stoq.ledger_writer import LedgerWriter
from stoq.store import Store, upgrade
from stoq.tables import SCAN_LEDGER

PROFILE = {"workers": ["yara", "peinfo"], "plugins": {"yara": {"rules": "/r/ü.yar"}}, "max_depth": 0, "timeout": 60.0}


def roots(n: int) -> list[dict[str, Any]]:
    return [{"scan_id": str(uuid.uuid4()), "sha256": f"{i:064x}", "size": 10 + i, "filename": f"fïle {i}.exe",
             "source": {"path": f"/in/fïle {i}.exe", "meta": {"k": "v"}}, "date": "2026-12-06T09:00:00Z",
             "at": ["pack-1", 64 * i, 10 + i]} for i in range(n)]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A schema of its own in the shared ``test`` database (as tests/test_store.py), dropped after."""
    admin = pg_admin()
    schema = f"stoq_test_ledger_writer_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def rows_of(store: Store, scan_ids: list[str]) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        found = conn.execute(select(SCAN_LEDGER).where(SCAN_LEDGER.c.scan_id.in_(scan_ids))).mappings().all()
    by_id = {row["scan_id"]: dict(row) for row in found}
    return [by_id[i] for i in scan_ids]


@pytest.mark.postgres
def test_its_rows_are_those_of_ledger_record(pg_url: str) -> None:
    upgrade(pg_url)
    store = Store.open(pg_url)
    writer = LedgerWriter(pg_url)
    try:
        ours, theirs = roots(3), roots(3)
        for mine, other in zip(ours, theirs):
            mine.update({k: v for k, v in other.items() if k != "scan_id"})
        before = datetime.now(timezone.utc)
        writer.record(ours, PROFILE, "stoq:notify:n1", None)
        ledger.record(store, theirs, PROFILE, "stoq:notify:n1", None)
        after = datetime.now(timezone.utc)
        got, expected = rows_of(store, [r["scan_id"] for r in ours]), rows_of(store, [r["scan_id"] for r in theirs])
        for row in got + expected:
            assert before - timedelta(seconds=1) <= row["submitted_at"] == row["last_attempt_at"] <= after
        def same(row: dict[str, Any]) -> dict[str, Any]:  # what both batches share: all but ids and times
            return {k: v for k, v in row.items() if k not in ("scan_id", "submitted_at", "last_attempt_at")} | {
                "root": {k: v for k, v in row["root"].items() if k != "scan_id"}}

        assert [same(row) for row in got] == [same(row) for row in expected]
        assert [row["root"] for row in got] == ours and got[0]["profile"] == PROFILE
        assert got[0]["state"] == ledger.PENDING and got[0]["attempts"] == 1
        assert writer.record(roots(1), PROFILE, None, "stoq:verdicts:v1") == {}  # a --no-wait submission's list
        again = writer.record(ours[:1] + roots(1), PROFILE, "stoq:notify:n2")  # a source submitting again
        assert again == {ours[0]["scan_id"]: {"scan_id": ours[0]["scan_id"], "state": "pending", "attempts": 1,
                                              "error": None}}
        assert rows_of(store, [ours[0]["scan_id"]])[0]["notify"] == "stoq:notify:n1"  # left as it was
        assert ledger.states(store, [r["scan_id"] for r in ours]) == {r["scan_id"]: "pending" for r in ours}
    finally:
        writer.close()
        store.close()


@pytest.mark.postgres
def test_a_database_at_another_revision_is_refused_as_the_store_refuses_it(pg_url: str) -> None:
    with pytest.raises(Exception) as caught:
        LedgerWriter(pg_url)
    assert type(caught.value).__name__ == "NotMigrated" and "stoq db upgrade" in str(caught.value)


def test_an_unreachable_database_is_a_store_error() -> None:
    with pytest.raises(Exception) as caught:
        LedgerWriter("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert type(caught.value).__name__ == "StoreError"
    assert str(caught.value).startswith("cannot open the store postgresql://nobody@127.0.0.1:1/none")


@pytest.mark.postgres
def test_it_does_not_import_sqlalchemy(pg_url: str) -> None:
    upgrade(pg_url)
    code = ("import sys, uuid; from stoq.ledger_writer import LedgerWriter; w = LedgerWriter(sys.argv[1]); "
            "w.record([{'scan_id': str(uuid.uuid4()), 'sha256': '0' * 64, 'filename': 'x'}], {'workers': []}, None); "
            "print('sqlalchemy' in sys.modules)")
    got = subprocess.run([sys.executable, "-c", code, pg_url], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "False\n"


def test_any_other_store_is_written_through_the_store(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'stoq.db'}"
    upgrade(url)
    writer = LedgerWriter(url)
    try:
        batch = roots(2)
        writer.record(batch, PROFILE, "stoq:notify:n2")
        assert ledger.states(writer.store, [r["scan_id"] for r in batch]) == {r["scan_id"]: "pending" for r in batch}
        assert [row["root"] for row in rows_of(writer.store, [r["scan_id"] for r in batch])] == batch
    finally:
        writer.close()
