"""The connector outbox: documents a connector has not delivered yet, kept in the result store.

One row per (connector, scan id) in the table ``connector_outbox`` (migration 0002): ``state``
(``pending``, ``delivered``, ``missing``: the scan is not in the store), ``attempts``, ``next_try``
(Unix time), ``last_error`` and the connector's ``options`` (JSON, without secret options). A row is
written when a delivery fails (right after the failure; the document itself is already in, or on its
way to, the store), never for a delivery that succeeds at once: the happy path costs nothing.

:func:`catch_up` delivers the due rows again: it claims them (``next_try`` pushed one lease ahead, so
two catch-ups do not take the same rows; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), rebuilds each
connector from its stored options over the current configuration (for the secrets), reads the
documents back from the store and delivers them; a failure pushes ``next_try`` back with exponential
backoff (:func:`backoff`). Runs at the end of ``stoq scan`` (rows of its connectors that are due),
from ``stoq connectors catch-up``, and in every cluster worker (``stoq.tasks.sweeper``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson
from sqlalchemy import text

from stoq.config import ConfigError, Settings
from stoq.registry import Registry
from stoq.store import Store

log = logging.getLogger(__name__)

#: Backoff of a failed delivery: ``BASE * 2 ** (attempts - 1)`` seconds, at most ``MAX``.
BACKOFF_BASE = 5.0
BACKOFF_MAX = 600.0
#: How long a claimed row is left alone by other catch-ups.
LEASE = 120.0


def backoff(attempts: int) -> float:
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


@dataclass
class CatchUp:
    """Counts of one catch-up, per connector."""

    delivered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    withheld: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, counter: dict[str, int], name: str, n: int) -> None:
        if n:
            counter[name] = counter.get(name, 0) + n


class Outbox:
    """The outbox table of a store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pg = store.engine.dialect.name == "postgresql"

    def defer(self, connector: str, options: str, scan_ids: Iterable[str], error: str,
              now: float | None = None) -> None:
        """Records (or re-records) undelivered documents: attempts + 1, next try after the backoff."""
        ids = list(dict.fromkeys(scan_ids))
        if not ids:
            return
        now = time.time() if now is None else now
        with self.store.engine.execution_options(stoq_write=True).begin() as conn:
            known = dict(conn.execute(text(
                "SELECT scan_id, attempts FROM connector_outbox WHERE connector = :c AND scan_id IN :ids"
            ).bindparams(_expanding("ids")), {"c": connector, "ids": ids}).all())
            rows = []
            for scan_id in ids:
                attempts = (known.get(scan_id) or 0) + 1 if scan_id in known else 1
                rows.append({"c": connector, "s": scan_id, "a": attempts, "n": now + backoff(attempts),
                             "e": error[:2000], "o": options, "u": now})
            conn.execute(text(
                "INSERT INTO connector_outbox (connector, scan_id, state, attempts, next_try, last_error, options, updated) "
                "VALUES (:c, :s, 'pending', :a, :n, :e, :o, :u) ON CONFLICT (connector, scan_id) DO UPDATE SET "
                "state = 'pending', attempts = excluded.attempts, next_try = excluded.next_try, "
                "last_error = excluded.last_error, options = excluded.options, updated = excluded.updated"), rows)

    def mark(self, connector: str, scan_ids: Iterable[str], state: str, now: float | None = None) -> None:
        """``delivered`` or ``missing``: the row is done with (kept as a record; ``next_try`` NULL)."""
        ids = list(scan_ids)
        if ids:
            with self.store.engine.execution_options(stoq_write=True).begin() as conn:
                conn.execute(text("UPDATE connector_outbox SET state = :st, next_try = NULL, updated = :u "
                                  "WHERE connector = :c AND scan_id IN :ids").bindparams(_expanding("ids")),
                             {"st": state, "u": time.time() if now is None else now, "c": connector, "ids": ids})

    def claim(self, connectors: Iterable[str] | None = None, due_by: float | None = None,
              limit: int = 500) -> list[tuple[str, str, str]]:
        """Takes up to ``limit`` pending rows due by ``due_by`` (default now; ``float('inf')``: every
        pending row) of these connectors (default all): (connector, scan id, options), oldest first.
        Each is leased (next_try = now + LEASE) so that another catch-up leaves it alone."""
        now = time.time()
        due_by = now if due_by is None else due_by
        names = list(connectors) if connectors is not None else None
        where = "state = 'pending' AND next_try <= :due" + (" AND connector IN :names" if names is not None else "")
        sql = text(f"SELECT connector, scan_id, options FROM connector_outbox WHERE {where} "
                   f"ORDER BY next_try, scan_id LIMIT :lim" + (" FOR UPDATE SKIP LOCKED" if self._pg else ""))
        if names is not None:
            if not names:
                return []
            sql = sql.bindparams(_expanding("names"))
        params: dict[str, Any] = {"due": min(due_by, 1e300), "lim": limit, "names": names}
        with self.store.engine.execution_options(stoq_write=True).begin() as conn:  # SQLite: BEGIN IMMEDIATE
            rows = [tuple(r) for r in conn.execute(sql, params).all()]
            by_connector: dict[str, list[str]] = {}
            for name, scan_id, _ in rows:
                by_connector.setdefault(name, []).append(scan_id)
            for name, ids in by_connector.items():
                conn.execute(text("UPDATE connector_outbox SET next_try = :n WHERE connector = :c AND scan_id IN :ids")
                             .bindparams(_expanding("ids")), {"n": now + LEASE, "c": name, "ids": ids})
        return rows  # type: ignore[return-value]

    def rows(self) -> list[dict[str, Any]]:
        """Every row (for ``stoq connectors status`` and the tests)."""
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(
                "SELECT connector, scan_id, state, attempts, next_try, last_error FROM connector_outbox "
                "ORDER BY connector, scan_id")).all()]

    def pending_count(self, connectors: Iterable[str] | None = None) -> int:
        with self.store.engine.connect() as conn:
            return sum(1 for r in conn.execute(text("SELECT connector FROM connector_outbox WHERE state = 'pending'")).all()
                       if connectors is None or r[0] in set(connectors))


def _expanding(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name, expanding=True)


def catch_up(store: Store, settings: Settings, registry: Registry | None = None,
             connectors: Iterable[str] | None = None, due_by: float | None = None, limit: int = 500) -> CatchUp:
    """Delivers the outbox's due rows (see the module's docstring); returns the counts."""
    from stoq.connectors import deliver_each, open_connector, stored_options

    registry = registry if registry is not None else Registry.discover()
    outbox = Outbox(store)
    result = CatchUp()
    groups: dict[tuple[str, str], list[str]] = {}
    for name, scan_id, options in outbox.claim(connectors, due_by, limit):
        groups.setdefault((name, options), []).append(scan_id)
    for (name, options), ids in groups.items():
        try:  # the stored options over this process's configuration (which holds the secrets)
            connector = open_connector(registry, name, settings.plugins.get(name, {}) | orjson.loads(options))
        except (ConfigError, LookupError) as exc:
            outbox.defer(name, options, ids, f"cannot start: {exc}")
            result.add(result.failed, name, len(ids))
            result.errors.append(f"connector {name!r} cannot start: {exc}")
            continue
        try:
            docs = [doc for doc in map(store.get, ids) if doc is not None]
            missing = sorted(set(ids) - {doc["scan_id"] for doc in docs})
            outbox.mark(name, missing, "missing")
            result.add(result.missing, name, len(missing))
            (out,) = deliver_each([connector], docs)
            outbox.mark(name, out.sent + out.withheld, "delivered")
            if out.failed:
                outbox.defer(name, stored_options(connector), out.failed, out.error or "failed")
                result.errors.append(out.message() or "")
            result.add(result.delivered, name, len(out.sent))
            result.add(result.withheld, name, len(out.withheld))
            result.add(result.failed, name, len(out.failed))
        finally:
            close = getattr(connector, "close", None)
            if close is not None:
                close()
    return result
