"""dirmon's ledger: one row per (path, content) a directory monitor has submitted, in the result store
(table ``dirmon_ledger``, ``stoq.tables.DirmonLedgerRow``; migration 0002).

A row is written ``pending``, with the scan id chosen for the file, *before* the file is submitted;
it becomes ``submitted`` once the cluster has the message, ``stored`` once the document is in the
store (after which ``--move-to`` or ``--delete`` may act), ``failed`` with a reason when the file
could not be submitted (gone, unreadable, changed before it was read). A submission lost in a crash
is found ``pending`` at the next start and sent again under the same scan id: the store keeps one
document per scan id, so the file gets exactly one.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable, NamedTuple

from sqlalchemy import Engine, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from stoq.tables import DIRMON_LEDGER as T

STATES = ("pending", "submitted", "stored", "failed")
CHUNK = 500  # keys per IN (...) query


class Entry(NamedTuple):
    """A ledger row, as dirmon reads it."""

    path: str
    sha256: str
    size: int
    mtime_ns: int
    scan_id: str
    state: str


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for at in range(0, len(items), CHUNK):
        yield items[at:at + CHUNK]


class Ledger:
    """The ledger on the result store's SQLAlchemy engine (``Store.engine``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(stoq_write=True)  # SQLite: BEGIN IMMEDIATE (stoq.store)
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(T)

    def latest(self, paths: list[str]) -> dict[str, Entry]:
        """The newest row of each path that has one (what a scan of the tree compares a file with)."""
        found: dict[str, Entry] = {}
        cols = (T.c.path, T.c.sha256, T.c.size, T.c.mtime_ns, T.c.scan_id, T.c.state)
        with self.engine.connect() as conn:
            for part in _chunks(paths):
                for row in conn.execute(select(*cols).where(T.c.path.in_(part)).order_by(T.c.id)):
                    found[row.path] = Entry(*row)
        return found

    def known(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (path, sha256) pairs have a row."""
        out: set[tuple[str, str]] = set()
        paths = sorted({p for p, _ in pairs})
        with self.engine.connect() as conn:
            for part in _chunks(paths):
                out.update((r.path, r.sha256) for r in conn.execute(select(T.c.path, T.c.sha256).where(T.c.path.in_(part))))
        return out & set(pairs)

    def add_pending(self, entries: list[Entry]) -> list[Entry]:
        """Inserts the rows ``pending``, in one transaction; returns those inserted (a (path, sha256)
        already in the ledger, submitted by an earlier run or another dirmon, is not inserted)."""
        if not entries:
            return []
        now = datetime.now(timezone.utc)
        rows = [{"path": e.path, "sha256": e.sha256, "size": e.size, "mtime_ns": e.mtime_ns, "scan_id": e.scan_id,
                 "state": "pending", "updated_at": now} for e in entries]
        with self._writer.begin() as conn:
            inserted = set(conn.execute(self._insert.on_conflict_do_nothing().returning(T.c.scan_id), rows).scalars())
        return [e._replace(state="pending") for e in entries if e.scan_id in inserted]

    def mark(self, scan_ids: list[str], state: str, reason: str | None = None) -> None:
        assert state in STATES
        if not scan_ids:
            return
        now = datetime.now(timezone.utc)
        with self._writer.begin() as conn:
            for part in _chunks(scan_ids):
                conn.execute(update(T).where(T.c.scan_id.in_(part)).values(state=state, reason=reason, updated_at=now))

    def in_state(self, state: str, limit: int = 10_000, after: int = 0) -> list[tuple[int, Entry]]:
        """Rows in ``state``, oldest first, after row id ``after`` (to page through them)."""
        cols = (T.c.id, T.c.path, T.c.sha256, T.c.size, T.c.mtime_ns, T.c.scan_id, T.c.state)
        query = select(*cols).where(T.c.state == state, T.c.id > after).order_by(T.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [(row[0], Entry(*row[1:])) for row in conn.execute(query)]

    def stored(self, scan_ids: list[str]) -> set[str]:
        """Which of these scans have their document in the store."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for part in _chunks(scan_ids):
                holders = ", ".join(f":k{i}" for i in range(len(part)))
                out.update(conn.execute(text(f"SELECT scan_id FROM scans WHERE scan_id IN ({holders})"),
                                        {f"k{i}": k for i, k in enumerate(part)}).scalars())
        return out

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            return {state: n for state, n in conn.execute(select(T.c.state, func.count()).group_by(T.c.state))}
