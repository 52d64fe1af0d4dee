"""SQLite connections of the result store, and the CLI's writer that needs no SQLAlchemy.

:func:`configure` gives every connection the same settings, whether SQLAlchemy opened it
(:class:`stoq.store.Store`) or the CLI did (:class:`SqliteWriter`). The CLI saves to a SQLite store
at the current schema with :class:`SqliteWriter`, so that a scan never waits for SQLAlchemy's import
(as long as scanning hundreds of small files); the rows are those of :func:`stoq.rows.document_rows`,
as the Store writes them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterable

from stoq import metrics
from stoq.rows import SQLITE_INSERTS, StoreError, document_rows

BUSY_MS = 30_000
CACHE_KIB = -65_536  # negative: KiB, so 64 MiB at most (allocated as used)
CHECKPOINT_PAGES = 2_000  # ~8 MB of WAL between automatic checkpoints (see configure)
WAL_LIMIT = 64 * 1024 * 1024


def configure(conn: Any) -> None:
    """Settings of every connection to a SQLite store (``conn``: a ``sqlite3.Connection``).

    Transactions are begun explicitly (``isolation_level = None``), so DDL and DML share them.
    """
    conn.isolation_level = None
    cur = conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    _wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # Every saved document adds a row to several indexes keyed by random values (sha256s), so a
    # batch dirties pages all over the file: a bigger page cache helps. Checkpoints every 2,000 pages
    # rather than SQLite's 1,000 copy a page back fewer times; not much rarer, because the checkpoint
    # left when the last connection closes makes the command wait for its fsync, longer the more
    # pages are left (the earlier checkpoints wait in the CLI's store thread, beside the scan; the
    # figures: docs/performance.md). The WAL file is truncated back after a checkpoint.
    cur.execute(f"PRAGMA cache_size={CACHE_KIB}")
    cur.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    cur.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    cur.close()


def _wal(cur: Any) -> None:
    """Switches a SQLite database to WAL (a setting kept in the file), once.

    The switch needs the database to itself, and SQLite may refuse it at once ("database is locked")
    without waiting when another connection is opening the new file too: retry until busy_timeout.
    """
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() in ("wal", "memory"):
        return
    deadline = time.monotonic() + BUSY_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class SqliteWriter:
    """Saves scan documents to a SQLite store already at the current schema, with ``sqlite3`` only.

    The same rows and idempotent inserts as :meth:`stoq.store.Store.save`, one transaction per call.
    Used from one thread at a time (the CLI's store thread).
    """

    def __init__(self, path: str) -> None:
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_MS / 1000, check_same_thread=False)
            configure(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {path}: {exc}") from exc
        self.path = path

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        """Saves scan documents, all in one transaction. Saving a document again changes nothing."""
        rows = document_rows(documents, sqlite=True)
        if not rows[0]:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")  # the write lock up front, waiting up to busy_timeout
            try:
                for sql, batch in zip(SQLITE_INSERTS, rows):
                    if batch:
                        db.executemany(sql, batch)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot save {len(rows[0])} scan document(s) to {self.path}: {exc}") from exc
        metrics.stored(rows)

    def close(self) -> None:
        self._db.close()
