"""Opening the result store without making the scan wait for it.

Importing SQLAlchemy costs ~0.4 s here, about as long as scanning 400 small files. When the store is
the usual SQLite file already at the current schema (checked with the standard ``sqlite3`` module),
the CLI starts scanning at once and opens the store in a thread; the first batch of documents waits
for it. Any other store (a server database, a SQLite file to create or migrate) is opened before the
scan starts, so that a store that cannot be used stops the command before anything is printed.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any
from urllib.parse import unquote

from stoq.migrations import HEAD_REVISION


def sqlite_at_head(url: str) -> bool:
    """True if ``url`` is a plain ``sqlite:///PATH`` whose schema is at ``HEAD_REVISION``."""
    if not url.startswith("sqlite:///") or "?" in url:
        return False
    path = unquote(url[len("sqlite:///"):])
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
    """Opens ``Store.open(url)`` now, or in a thread (``start``) when that is known to be safe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Any = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if sqlite_at_head(url):
            self._thread = threading.Thread(target=self._open, name="stoq-store-open", daemon=True)
        else:
            self._open()
            if self._error is not None:
                raise self._error

    def _open(self) -> None:
        try:
            from stoq.store import Store

            self._store = Store.open(self.url)
        except BaseException as exc:  # handed to the caller of get()
            self._error = exc

    def start(self) -> None:
        """Starts the background open (after the worker processes are forked)."""
        if self._thread is not None and not self._thread.is_alive() and self._store is None:
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def get(self) -> Any:
        """The open ``Store`` (waits for the thread); raises what opening it raised."""
        self.start()
        self.join()
        if self._error is not None:
            raise self._error
        return self._store
