"""The sweeper: every worker, every few seconds, closes the scans whose wave is overdue and publishes
again, from the ledger, the scans that were lost.

A wave left unanswered for ``sweep_after`` seconds (a lost message, a dead worker's task not yet
redelivered, a queue nobody serves) has its unanswered parts sent again, ``wave_resends`` times,
``sweep_after`` seconds apart: a plugin task lost with its worker is run again, and costs time, not
answers. A wave still unanswered after that is closed as a collector would close it, with what did
arrive: the answers of the parts that answered are kept, and each plugin whose part never answered
gets a ``timeout`` error on its payloads; the scans go on (their next wave) or are stored. A finished
scan still unstored that long (its collector could not save it) is sent to the store again.

A scan the ledger holds as pending for ``recover_after`` seconds with no state in Redis (Redis
restarted empty, a publish lost with its worker) is published again (``stoq.ledger``); after
``max_attempts`` publishes the ledger gives it up as failed (``lost``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis
from celery import Celery

from stoq.tasks import state as st
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE
from stoq.tasks.join import send_again, unanswered, wave_answers
from stoq.tasks.pipeline import absorb_wave, send_store, settle
from stoq.tasks.plumbing import BLOB_TTL, redis_client
from stoq.tasks.settings import worker_settings

log = logging.getLogger(__name__)

#: Seconds between two rounds of a worker's sweeper.
SWEEP_EVERY = 5.0
#: Seconds between two catch-ups of the connector outbox (one worker of the cluster sends it).
CATCH_UP_EVERY = 30
CATCH_UP_KEY = "stoq:outbox:catch-up"


def maybe_catch_up(app: Celery) -> bool:
    """Sends ``stoq.connectors.catch_up`` at most once per ``CATCH_UP_EVERY`` seconds for the whole
    cluster (a Redis key taken with SET NX EX by the first worker whose sweeper gets there)."""
    if redis_client(app).set(CATCH_UP_KEY, b"1", nx=True, ex=CATCH_UP_EVERY):
        app.send_task("stoq.connectors.catch_up", queue=COLLECT_QUEUE)
        return True
    return False

def sweep(app: Celery, now: float | None = None) -> list[str]:
    """Closes scans whose wave is overdue (see the module's docstring); sends finished but unstored
    ones to the store again. Returns the closed and re-sent scan ids."""
    r = redis_client(app)
    due: list[bytes] = r.zrangebyscore(st.ACTIVE, 0, now or time.time(), start=0, num=100)  # type: ignore[assignment]
    overdue = [s.decode() for s in due]
    closed: list[str] = []
    unstored: list[str] = []
    waves: dict[str, list[str]] = {}
    for scan_id, scan in zip(overdue, st.load_states(r, overdue)):
        if scan is None:
            r.zrem(st.ACTIVE, scan_id)
        elif scan.done:
            r.zadd(st.ACTIVE, {scan_id: time.time() + worker_settings().sweep_after})
            unstored.append(scan_id)
        else:
            waves.setdefault(scan.wave, []).append(scan_id)
    resent: list[str] = []
    for wave_id, scan_ids in waves.items():
        what = resend_or_close(app, r, wave_id, now or time.time())
        if what == CLOSE:
            closed += close_wave(app, r, wave_id, scan_ids)
        elif what == RESENT:
            resent.append(wave_id)
    send_store(app, unstored)
    if resent:
        log.warning("sweeper sent again the unanswered plugin tasks of %d overdue wave(s): %s", len(resent),
                    ", ".join(resent))
    if closed:
        log.warning("sweeper closed the overdue wave of %d scan(s): %s", len(closed), ", ".join(closed))
    if unstored:
        log.warning("sweeper sent %d finished but unstored scan(s) to the store: %s", len(unstored),
                    ", ".join(unstored))
    return closed + unstored


#: What ``resend_or_close`` did with an overdue wave.
CLOSE, RESENT, WAIT = "close", "resent", "wait"


def resends_key(wave_id: str) -> str:
    """``"<count> <time>"``: how often, and when last, the wave's unanswered parts were sent again (a
    key of its own: a field in the wave's hash would upset the count that completes the wave)."""
    return f"{st.wave_key(wave_id)}:resends"


def resend_or_close(app: Celery, r: redis.Redis, wave_id: str, now: float) -> str:
    """For an overdue wave: ``RESENT`` when its unanswered parts were sent again now (and its scans
    given another ``sweep_after``); ``CLOSE`` when it has no unanswered part (its collector was lost)
    or was sent again ``wave_resends`` times already; ``WAIT`` when another worker's sweeper sent it
    again less than ``sweep_after`` ago (it read the schedule before that sweeper moved it)."""
    settings = worker_settings()
    fields: dict[bytes, bytes] = r.hgetall(st.wave_key(wave_id))  # type: ignore[assignment]
    if b"batch" not in fields:
        return CLOSE
    batch = orjson.loads(fields[b"batch"])
    missing = unanswered(fields, batch["parts"])
    if not missing:
        return CLOSE
    key = resends_key(wave_id)
    with r.pipeline() as pipe:
        try:
            pipe.watch(key)  # one sweeper of the cluster counts a resend
            raw: bytes | None = pipe.get(key)  # type: ignore[assignment]
            count, last = (int(raw.split()[0]), float(raw.split()[1])) if raw else (0, 0.0)
            if count and now < last + settings.sweep_after:
                return WAIT
            if count >= settings.wave_resends:
                return CLOSE
            pipe.multi()
            pipe.set(key, f"{count + 1} {now}", ex=BLOB_TTL)
            pipe.zadd(st.ACTIVE, {scan_id: now + settings.sweep_after for scan_id, _ in batch["scans"]}, xx=True)
            pipe.execute()
        except redis.WatchError:
            return WAIT
    send_again(app, wave_id, fields, batch["parts"], missing)
    return RESENT


def close_wave(app: Celery, r: redis.Redis, wave_id: str, overdue: list[str]) -> list[str]:
    """Closes a wave with the answers that arrived: every scan still waiting on it (the overdue ones,
    and the wave's others, which share its deadline) in one transaction; a plugin part that never
    answered costs its payloads a ``timeout`` error for that plugin, nothing more."""
    key = st.wave_key(wave_id)
    fields: dict[bytes, bytes] = r.hgetall(key)  # type: ignore[assignment]
    batch = orjson.loads(fields[b"batch"]) if b"batch" in fields else {"scans": [], "parts": []}
    scan_ids = list(dict.fromkeys(overdue + [s for s, _ in batch["scans"]]))
    settings = worker_settings()
    message = (f"no answer within {settings.sweep_after:g} s (a lost or unserved task)"
               + (f", sent again {settings.wave_resends} time(s), {settings.sweep_after:g} s apart"
                  if settings.wave_resends else "") + "; the wave was closed by the sweeper")
    with r.pipeline() as pipe:
        try:
            pipe.watch(key, *(st.scan_key(s) for s in scan_ids))
            fields = pipe.hgetall(key)  # again, watched: an answer arriving now makes a WatchError
            answers = wave_answers(fields, batch["parts"])
            scans = [s for s in st.load_states(pipe, scan_ids) if s is not None and s.wave == wave_id and not s.done]
            next_waves, finished = [], []
            for scan in scans:
                for entry in scan.pending:
                    pid = entry["record"]["payload_id"]
                    lost = [step for step in entry["plan"] if (pid, step[0]) not in answers]
                    entry["errors"] += [{"payload_id": pid, "plugin": name, "kind": "timeout", "message": message}
                                        for name, *_ in lost]
                    entry["plan"] = [step for step in entry["plan"] if (pid, step[0]) in answers]
                children = absorb_wave(r, scan, answers)
                if children:
                    next_waves.append((scan, children))
                else:
                    finished.append(scan)
            # As a collector: the next waves are sent, the finished scans saved, the wave deleted (a
            # plugin task still queued for it then finds nothing to do, a late collector changes nothing).
            settle(app, r, next_waves, finished, pipe, settled=wave_id)
            r.delete(resends_key(wave_id))
        except redis.WatchError:
            return []  # answered or collected meanwhile: the next round looks again
    return [s.scan_id for s in scans]


# -- recovery from the ledger ----------------------------------------------------------------------------

_LEDGER: Any = None


def ledger_store() -> Any:
    """The sweeper's own store (this process's main thread's timer; never the pool's): its connections
    are closed after each round, so none is open when the pool forks."""
    global _LEDGER
    if _LEDGER is None:
        from stoq.store import Store

        _LEDGER = Store.open(worker_settings().resolved_database_url())
    return _LEDGER


def recover(app: Celery) -> list[str]:
    """Publishes again the pending scans of the ledger that are overdue and not in progress; gives up
    (``failed``) those published ``max_attempts`` times. Returns the republished scan ids."""
    from stoq import ledger

    settings = worker_settings()
    store = ledger_store()
    try:
        rows = ledger.due(store, settings.recover_after)
        if not rows:
            return []
        r = redis_client(app)
        states = st.load_states(r, [row["scan_id"] for row in rows])
        ledger.touch(store, [row["scan_id"] for row, scan in zip(rows, states) if scan is not None])
        again: dict[tuple[str, str | None, str | None], list[dict[str, Any]]] = {}
        failed = []
        for row, scan in zip(rows, states):
            if scan is not None:
                continue  # in progress: the wave sweeper above answers for it
            if row["root"].get("oversized"):  # never published: only its client could save its record
                if ledger.fail(store, row["scan_id"], row["attempts"], "lost: the client stopped before saving the "
                               "record of this input over max_file_bytes; submit it again"):
                    failed.append(row["scan_id"])
                continue
            if row["attempts"] >= settings.max_attempts:
                why = (f"lost: no document after {row['attempts']} publish(es), {settings.recover_after:g} s "
                       "apart (the scan's state vanished each time: Redis or the broker lost it)")
                if ledger.fail(store, row["scan_id"], row["attempts"], why):
                    failed.append(row["scan_id"])
                continue
            if ledger.claim(store, row):
                profile_id = st.put_profile(r, row["profile"])
                again.setdefault((profile_id, row["notify"], row["verdicts"]), []).append(row["root"] | {"attempt": row["attempts"] + 1})
        sent = []
        for (profile_id, notify, verdicts), roots in again.items():
            for at in range(0, len(roots), settings.batch_max):
                chunk = roots[at:at + settings.batch_max]
                app.send_task("stoq.publish", args=(profile_id, st.wrap(r, chunk), notify), queue=DEFAULT_QUEUE,
                              kwargs={"verdicts": verdicts} if verdicts else None,
                              argsrepr=st.describe_batch(profile_id, "roots", [root["scan_id"] for root in chunk]),
                              kwargsrepr="")
                sent += [root["scan_id"] for root in chunk]
    finally:
        store.engine.dispose()
    if sent:
        log.warning("sweeper published again %d lost scan(s) from the ledger: %s", len(sent), ", ".join(sent))
    if failed:
        log.error("the ledger gave up %d lost scan(s): %s", len(failed), ", ".join(failed))
    return sent
