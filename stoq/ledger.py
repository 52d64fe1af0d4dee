"""The scan ledger: every submitted scan, in the SQL store, from before it is published until it is
finished (issue 15).

Redis holds a scan while it runs; if Redis or the broker lose it (restarted empty, a worker killed
holding an unacked publish), the ledger still has it. A scan's life in the ledger:

- ``pending``: recorded by the client, one transaction per batch, *before* its publish is sent (the
  client prints only ids it recorded). ``attempts`` counts publishes (1 for the client's).
- ``finished``: set by ``Store.save`` in the transaction that saves the scan's document.
- ``failed``: a scan republished ``max_attempts`` times without a document; ``error`` says why.

Recovery (``due``, ``claim``): the sweeper of every worker takes the pending scans whose last publish
is older than ``recover_after`` seconds and which are not demonstrably in progress (no state in
Redis), and publishes them again; a claim is one conditional UPDATE, so two sweepers never republish
the same scan twice for one attempt. Writes of documents are idempotent by scan id (and so by scan,
payload and plugin), so a scan published twice is stored once.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from stoq import metrics
from stoq.store import Store, StoreError
from stoq.tables import SCAN_LEDGER as L

PENDING, FINISHED, FAILED = "pending", "finished", "failed"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def record(store: Store, roots: list[dict[str, Any]], profile: dict[str, Any], notify: str | None,
           verdicts: str | None = None) -> dict[str, dict[str, Any]]:
    """Records a batch of submitted roots as pending, in one transaction. A root whose scan id the
    ledger holds already (a source submitting again under the same id: dirmon after a restart, a
    message delivered again to intake) is not recorded twice: returned, scan id -> its row (``state``,
    ``attempts``, ``error``), for the caller to decide."""
    if not roots:
        return {}
    now = _now()
    try:
        with store.engine.execution_options(stoq_write=True).begin() as conn:
            ids = [root["scan_id"] for root in roots]
            known = {row["scan_id"]: dict(row) for row in conn.execute(
                select(L.c.scan_id, L.c.state, L.c.attempts, L.c.error).where(L.c.scan_id.in_(ids))).mappings()}
            rows = [{"scan_id": root["scan_id"], "root_sha256": root["sha256"], "filename": root.get("filename"),
                     "root": root, "profile": profile, "notify": notify, "verdicts": verdicts, "submitted_at": now,
                     "state": PENDING, "attempts": 1, "last_attempt_at": now, "finished_at": None, "error": None}
                    for root in roots if root["scan_id"] not in known]
            if rows:
                conn.execute(_insert_new(store), rows)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record {len(roots)} submitted scan(s) in the ledger of {store.display}: {exc}") from exc
    metrics.scans("submitted", len(rows))
    return known


def _insert_new(store: Store) -> Any:
    """INSERT that leaves a row another client recorded meanwhile as it is."""
    if store.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(L).on_conflict_do_nothing(index_elements=["scan_id"])
    if store.engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(L).on_conflict_do_nothing(index_elements=["scan_id"])
    return insert(L)


def status(store: Store, scan_id: str) -> dict[str, Any] | None:
    """A scan's ledger row (state, submitted_at, attempts, last_attempt_at, finished_at, error,
    filename, root_sha256), None if the ledger never saw it."""
    try:
        with store.engine.connect() as conn:
            row = conn.execute(select(L.c.scan_id, L.c.state, L.c.submitted_at, L.c.attempts, L.c.last_attempt_at,
                                      L.c.finished_at, L.c.error, L.c.filename, L.c.root_sha256)
                               .where(L.c.scan_id == scan_id)).mappings().first()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the ledger of {store.display}: {exc}") from exc
    return None if row is None else dict(row)


def states(store: Store, scan_ids: list[str]) -> dict[str, str]:
    """scan id -> state, for those of ``scan_ids`` the ledger holds."""
    found: dict[str, str] = {}
    with store.engine.connect() as conn:
        for at in range(0, len(scan_ids), 500):
            chunk = scan_ids[at:at + 500]
            found.update(conn.execute(select(L.c.scan_id, L.c.state).where(L.c.scan_id.in_(chunk))).tuples().all())
    return found


def due(store: Store, recover_after: float, limit: int = 200) -> list[dict[str, Any]]:
    """Pending scans whose last publish is older than ``recover_after`` seconds, oldest first."""
    cutoff = _now() - timedelta(seconds=recover_after)
    with store.engine.connect() as conn:
        rows = conn.execute(select(L.c.scan_id, L.c.root, L.c.profile, L.c.notify, L.c.verdicts, L.c.attempts, L.c.last_attempt_at)
                            .where(and_(L.c.state == PENDING, L.c.last_attempt_at < cutoff))
                            .order_by(L.c.last_attempt_at).limit(limit)).mappings().all()
    return [dict(row) for row in rows]


def claim(store: Store, row: dict[str, Any]) -> bool:
    """Counts one more attempt of a ``due`` row; False if another sweeper claimed it first (or it
    finished meanwhile)."""
    with store.engine.execution_options(stoq_write=True).begin() as conn:
        done = conn.execute(update(L).where(and_(L.c.scan_id == row["scan_id"], L.c.state == PENDING,
                                                 L.c.attempts == row["attempts"]))
                            .values(attempts=row["attempts"] + 1, last_attempt_at=_now()))
    return done.rowcount == 1


def touch(store: Store, scan_ids: list[str]) -> None:
    """Restarts the recovery clock of pending scans that are demonstrably in progress (their state is
    in Redis), without counting an attempt."""
    if scan_ids:
        with store.engine.execution_options(stoq_write=True).begin() as conn:
            conn.execute(update(L).where(and_(L.c.scan_id.in_(scan_ids), L.c.state == PENDING))
                         .values(last_attempt_at=_now()))


def fail(store: Store, scan_id: str, attempts: int, why: str) -> bool:
    """Gives up on a pending scan (state ``failed``, ``error`` = why); False if it finished meanwhile."""
    with store.engine.execution_options(stoq_write=True).begin() as conn:
        done = conn.execute(update(L).where(and_(L.c.scan_id == scan_id, L.c.state == PENDING,
                                                 L.c.attempts == attempts))
                            .values(state=FAILED, error=why, finished_at=_now()))
    metrics.scans(FAILED, done.rowcount)
    return done.rowcount == 1


def refuse(store: Store, scan_ids: list[str], why: str) -> None:
    """Scans the workers refused to run (their settings): failed at once, with why; never republished."""
    if scan_ids:
        with store.engine.execution_options(stoq_write=True).begin() as conn:
            done = conn.execute(update(L).where(and_(L.c.scan_id.in_(scan_ids), L.c.state == PENDING))
                                .values(state=FAILED, error=f"refused: {why}", finished_at=_now()))
        metrics.scans(FAILED, done.rowcount)


def settle(store: Store, finished: list[str], failed: dict[str, str]) -> None:
    """Settles pending scans that ran outside the cluster (``stoq serve`` embedded: its scanning
    process has ended): ``finished`` ones are stored, ``failed`` ones (scan id -> why) never will be."""
    now = _now()
    given_up = 0
    with store.engine.execution_options(stoq_write=True).begin() as conn:
        if finished:
            conn.execute(update(L).where(and_(L.c.scan_id.in_(finished), L.c.state == PENDING))
                         .values(state=FINISHED, finished_at=now))
        for scan_id, why in failed.items():
            given_up += conn.execute(update(L).where(and_(L.c.scan_id == scan_id, L.c.state == PENDING))
                                     .values(state=FAILED, error=why, finished_at=now)).rowcount
    metrics.scans(FAILED, given_up)
