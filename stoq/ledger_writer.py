"""The submitting client's side of the ledger (``stoq.ledger``): a batch of submitted roots recorded as
pending, one statement per batch, before the batch is published.

The client is the head of the cluster's pipeline: until its first batch is recorded, every worker
waits. So when the store is PostgreSQL through psycopg2 (the cluster's store), the rows are written
with psycopg2 alone, as one JSON array unpacked by the server (``json_to_recordset``), and SQLAlchemy
is not imported at all (its import holds a submission back: docs/performance.md, "The ledger's
cost"). Any other store goes through ``stoq.store.Store``. Either way the rows are those
``stoq.ledger.record`` writes, and a database at another schema revision is refused the same way
(``NotMigrated``). The ``Store`` itself (the ledger's readers, when Redis is lost) opens on first use.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import orjson

from stoq.migrations import HEAD_REVISION
from stoq.rows import StoreError

#: A scan's states in the ledger (``stoq.ledger`` uses the same).
PENDING, FINISHED, FAILED = "pending", "finished", "failed"

_SCHEME = re.compile(r"^(postgresql|postgres)(\+psycopg2)?://", re.IGNORECASE)
_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")

#: The pending rows of a batch (``stoq.ledger.record``'s), from one JSON array; the profile, the
#: client's lists and the time are the batch's. One statement, so one transaction: the rows the ledger
#: holds already under those scan ids (a source submitting again under the same id) are returned and
#: left as they are, the others inserted (one recorded meanwhile by another client is left too).
_RECORD = ("WITH r AS (SELECT * FROM json_to_recordset(%(rows)s::json) "
           "AS r(scan_id text, sha256 text, filename text, root jsonb)), "
           "known AS (SELECT l.scan_id, l.state, l.attempts, l.error FROM scan_ledger l JOIN r USING (scan_id)), "
           "new AS (INSERT INTO scan_ledger (scan_id, root_sha256, filename, root, profile, notify, verdicts, "
           "submitted_at, state, attempts, last_attempt_at) "
           "SELECT r.scan_id, r.sha256, r.filename, r.root, %(profile)s::jsonb, %(notify)s, %(verdicts)s, "
           "%(now)s::timestamptz, 'pending', 1, %(now)s::timestamptz FROM r "
           "WHERE r.scan_id NOT IN (SELECT scan_id FROM known) ON CONFLICT (scan_id) DO NOTHING) "
           "SELECT scan_id, state, attempts, error FROM known")


class LedgerWriter:
    """Records submitted roots in the ledger of the store at ``url`` (see the module's docstring).
    Opening it checks the connection and the schema revision, as ``Store.open`` does."""

    CONNECT_TIMEOUT = 10

    def __init__(self, url: str) -> None:
        self.url = url
        self.display = _PASSWORD.sub(r"\1:***@", url)
        self._store: Any = None
        self._conn: Any = None
        self._direct = bool(_SCHEME.match(url))
        if self._direct:
            try:
                import psycopg2  # noqa: F401  (only whether it is there)
            except ImportError:  # SQLAlchemy says what is missing
                self._direct = False
        if self._direct:
            self._connect()
        else:
            self.store  # noqa: B018  (opens it: the same checks)

    @property
    def store(self) -> Any:
        """The ``stoq.store.Store`` of the same database, opened on first use."""
        if self._store is None:
            from stoq.store import Store

            self._store = Store.open(self.url)
        return self._store

    def _connect(self) -> Any:
        """This writer's connection (opened again after a failure), None when the database is not at
        this stoq's schema revision and the ``Store`` accepted it anyway (it migrated it)."""
        import psycopg2

        if self._conn is not None and not self._conn.closed:
            return self._conn
        dsn = _SCHEME.sub("postgresql://", self.url, count=1)
        try:
            given = psycopg2.extensions.parse_dsn(dsn)
            extra = {key: value for key, value in (("connect_timeout", self.CONNECT_TIMEOUT),
                                                   ("application_name", "stoq-submit")) if key not in given}
            conn = psycopg2.connect(dsn, **extra)
            conn.autocommit = True  # one statement per batch: its own transaction
            with conn.cursor() as cur:
                cur.execute("SELECT version_num FROM alembic_version")
                revisions = [row[0] for row in cur.fetchall()]
        except psycopg2.errors.UndefinedTable:
            revisions = []
        except psycopg2.Error as exc:
            raise StoreError(f"cannot open the store {self.display}: {_reason(exc)}") from exc
        if revisions != [HEAD_REVISION]:
            conn.close()
            self._direct = False
            self.store  # noqa: B018  (refuses the database: NotMigrated, with what to run)
            return None
        self._conn = conn
        return conn

    def record(self, roots: list[dict[str, Any]], profile: dict[str, Any], notify: str | None,
               verdicts: str | None = None) -> dict[str, dict[str, Any]]:
        """Records a batch of submitted roots as pending, in one transaction; returns the rows the
        ledger held already under their scan ids (scan id -> ``state``, ``attempts``, ``error``),
        which are left as they are."""
        if not roots:
            return {}
        if self._direct:
            try:
                conn = self._connect()
            except StoreError as exc:  # the database cannot be reached again
                raise StoreError(f"cannot record {len(roots)} submitted scan(s) in the ledger: {exc}") from exc
        if not self._direct or conn is None:
            from stoq import ledger

            return ledger.record(self.store, roots, profile, notify, verdicts) or {}
        import psycopg2

        rows = [{"scan_id": root["scan_id"], "sha256": root["sha256"], "filename": root.get("filename"), "root": root}
                for root in roots]
        params = {"rows": orjson.dumps(rows).decode(), "profile": orjson.dumps(profile).decode(), "notify": notify,
                  "verdicts": verdicts, "now": datetime.now(timezone.utc).isoformat()}
        try:
            with conn.cursor() as cur:
                cur.execute(_RECORD, params)
                known = {row[0]: {"scan_id": row[0], "state": row[1], "attempts": row[2], "error": row[3]}
                         for row in cur.fetchall()}
            from stoq import metrics

            metrics.scans("submitted", len(rows) - len(known))
        except psycopg2.Error as exc:
            if self._conn is not None and (isinstance(exc, psycopg2.OperationalError) or self._conn.closed):
                self._conn.close()
                self._conn = None  # a broken connection: the next batch opens another
            raise StoreError(f"cannot record {len(rows)} submitted scan(s) in the ledger of {self.display}: "
                             f"{_reason(exc)}") from exc
        return known

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._store is not None:
            self._store.close()


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
