"""Opening the result store and saving to it without making the scan wait.

Importing SQLAlchemy, and creating a store with Alembic, take as long as scanning hundreds of small
files (the figures: docs/performance.md, "Start-up"). When the store is the usual SQLite file already
at the current schema (checked with the standard ``sqlite3`` module), the CLI starts scanning at once and saves
with :class:`stoq.sqlitedb.SqliteWriter` (``sqlite3`` again, the Store's rows) in a thread, without
importing SQLAlchemy at all; the first batch of documents waits for it. A SQLite file that does not exist yet is
first created at the current schema from ``stoq/migrations/sqlite_head.sql`` (the schema Alembic's
migrations give, dumped; a test keeps the two equal), which takes milliseconds. Any other store (a
server database, a SQLite file to migrate) is opened before the scan starts, so that a store that
cannot be used stops the command before anything is printed.
"""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from stoq.migrations import HEAD_REVISION, sqlite_head_statements


def _sqlite_path(url: str) -> str | None:
    """The file of a plain ``sqlite:///PATH`` URL (no query, not in memory); None for anything else."""
    if not url.startswith("sqlite:///") or "?" in url:
        return None
    path = unquote(url[len("sqlite:///"):])
    return path if path and path != ":memory:" else None


def create_sqlite_at_head(url: str) -> bool:
    """Creates a new SQLite store at the current schema with the standard ``sqlite3`` module.

    Only for a plain ``sqlite:///PATH`` that does not exist yet or is empty; returns False (and leaves
    the work to Alembic, which reports any problem) otherwise, or if anything goes wrong. Safe when
    several processes create the same file: the first takes SQLite's write lock, the others then
    find its tables and stop.
    """
    path = _sqlite_path(url)
    if path is None:
        return False
    try:
        if os.path.getsize(path) > 0:
            return False
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
    except (OSError, sqlite3.Error):
        return False
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            db.execute("ROLLBACK")
            return False
        for statement in sqlite_head_statements():
            db.execute(statement)
        db.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (HEAD_REVISION,))
        db.execute("COMMIT")
        return True
    except (OSError, sqlite3.Error):  # OSError: sqlite_head.sql missing from a broken install
        if db.in_transaction:
            db.execute("ROLLBACK")
        return False
    finally:
        db.close()


def sqlite_at_head(url: str) -> bool:
    """True if ``url`` is a plain ``sqlite:///PATH`` whose schema is at ``HEAD_REVISION``."""
    path = _sqlite_path(url)
    if path is None:
        return False
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == HEAD_REVISION


class StoreLoader:
    """Opens the store and saves batches of documents in one background thread, so that the scan's
    supervisor never waits for SQLite (a WAL checkpoint can take a tenth of a second). A store that
    is not known to be ready is opened here, before the scan, so that a store that cannot be used stops
    the command before anything is printed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Any = None
        self._error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        at_head = create_sqlite_at_head(url) or sqlite_at_head(url)  # a new file: no second look
        self._sqlite = _sqlite_path(url) if at_head else None
        if self._sqlite is None:
            self._open()
            if self._error is not None:
                raise self._error

    def _open(self) -> None:
        if self._store is not None or self._error is not None:
            return
        try:
            if self._sqlite is not None:  # at the current schema: the standard sqlite3 module is enough
                from stoq.sqlitedb import SqliteWriter

                self._store = SqliteWriter(self._sqlite)
            else:
                from stoq.store import Store

                self._store = Store.open(self.url)
        except BaseException as exc:  # handed to the caller of finish()
            self._error = exc

    def _save(self, batch: list[dict[str, Any]]) -> None:
        self._open()
        if self._error is None:
            self._store.save(batch)

    def start(self) -> None:
        """Starts the thread and the opening of the store (after the worker processes are forked)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="stoq-store")
            self._pending.append(self._pool.submit(self._open))

    def save(self, batch: list[dict[str, Any]]) -> None:
        """Queues a batch; a failure surfaces in ``check`` or ``finish``."""
        self.start()
        assert self._pool is not None
        self._pending.append(self._pool.submit(self._save, batch))
        self.check()

    def check(self) -> None:
        """Raises the first failure of the saves done so far."""
        while self._pending and self._pending[0].done():
            self._pending.pop(0).result()
        if self._error is not None:
            raise self._error

    def join(self) -> None:
        """Waits until the thread is idle (before forking a replacement worker)."""
        for future in list(self._pending):
            future.exception()

    def finish(self) -> None:
        """Waits for every save, closes the store, and raises the first failure."""
        self.start()
        try:
            self.join()
            for future in self._pending:
                future.result()
            if self._error is not None:
                raise self._error
        finally:
            assert self._pool is not None
            self._pool.shutdown()
            if self._store is not None:
                self._store.close()
