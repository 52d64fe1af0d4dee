"""``stoq scan``'s side of the connectors: deliver each batch, keep what failed in the store's outbox,
catch up at the end (see :mod:`stoq.connectors` and :mod:`stoq.outbox`).

The outbox and the catch-up use the SQLAlchemy ``Store``; it is opened only when a delivery fails or
the outbox holds due rows of this scan's connectors (checked with ``sqlite3`` for the usual SQLite
store), so a scan whose connectors all deliver never imports SQLAlchemy for them."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable

from stoq.cli.storeload import _sqlite_path
from stoq.config import Settings
from stoq.connectors import deliver_each, stored_options
from stoq.plugin import ConnectorPlugin


class Deliveries:
    """The embedded scan's connectors; ``url`` is the result store (None with ``--no-store``)."""

    def __init__(self, connectors: list[ConnectorPlugin], url: str | None, settings: Settings,
                 say: Callable[[str], None]) -> None:
        self.connectors, self.url, self.settings, self.say = connectors, url, settings, say
        self._store: Any = None
        self.kept: dict[str, int] = {}

    def store(self) -> Any:
        if self._store is None:
            from stoq.store import Store

            assert self.url is not None
            self._store = Store.open(self.url)
        return self._store

    def deliver(self, docs: list[dict[str, Any]]) -> bool:
        """Delivers a batch; returns False when a connector failed (reported, and kept when there is a store)."""
        ok = True
        for out in deliver_each(self.connectors, docs):
            message = out.message()
            if message is None:
                continue
            ok = False
            if self.url is None:
                self.say(f"{message}; not kept for a retry (--no-store)")
                continue
            try:
                from stoq.outbox import Outbox

                Outbox(self.store()).defer(out.connector.name, stored_options(out.connector), out.failed, out.error or "")
            except Exception as exc:  # the store is away too: the scan's own store error says so
                self.say(f"{message}; and it could not be kept for a retry: {type(exc).__name__}: {exc}")
                continue
            self.kept[out.connector.name] = self.kept.get(out.connector.name, 0) + len(out.failed)
            self.say(f"{message}; kept in the store's outbox for a retry")
        return ok

    def _due(self) -> bool:
        """Are rows of these connectors due in the outbox? (sqlite3 for a SQLite store: no SQLAlchemy.)"""
        names = [c.name for c in self.connectors]
        path = _sqlite_path(self.url or "")
        if path is None:
            return True
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                marks = ",".join("?" * len(names))
                row = db.execute(f"SELECT count(*) FROM connector_outbox WHERE state = 'pending' AND next_try <= ? "
                                 f"AND connector IN ({marks})", [time.time(), *names]).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return False
        return bool(row[0])

    def finish(self) -> bool:
        """The end of the scan: delivers the outbox rows of these connectors that are due; says what
        is still kept. Returns False when a delivery failed."""
        ok = True
        if self.url is not None and self.connectors and self._due():
            from stoq.outbox import catch_up

            result = catch_up(self.store(), self.settings, connectors=[c.name for c in self.connectors])
            for name, n in result.delivered.items():
                self.say(f"connector {name!r}: {n} earlier document(s) delivered from the outbox")
            for message in result.errors:
                ok = False
                self.say(f"{message}; still kept in the outbox")
        for name, n in self.kept.items():
            self.say(f"connector {name!r}: {n} document(s) kept in the outbox: `stoq connectors catch-up` "
                     f"delivers them when the backend is back")
        for connector in self.connectors:
            connector.close()
        if self._store is not None:
            self._store.close()
        return ok
