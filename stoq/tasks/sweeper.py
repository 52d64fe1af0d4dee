"""The sweeper: every worker closes, every few seconds, the scans whose wave is overdue.

A wave left unanswered for ``sweep_after`` seconds (a lost message, a dead worker's task not yet
redelivered, a queue nobody serves) is closed: each payload of the wave is kept, with a ``timeout``
error per plugin that did not answer, the scan is stored, and the wave's hash is deleted. A finished scan still unstored that
long (its collector could not save it) is sent to the store again.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from stoq.tasks import state as st
from stoq.tasks.config import COLLECT_QUEUE
from stoq.tasks.pipeline import absorb_wave, commit, redis_client, send_store, worker_settings

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
    """Closes scans whose wave is overdue: each payload of the wave is kept with a ``timeout`` error
    per plugin that never answered. A finished scan still unstored that long (its collector could
    not save it) is sent to the store again. Returns the closed and re-sent scan ids."""
    r = redis_client(app)
    due: list[bytes] = r.zrangebyscore(st.ACTIVE, 0, now or time.time(), start=0, num=100)  # type: ignore[assignment]
    overdue = [s.decode() for s in due]
    closed, unstored = [], []
    for scan_id in overdue:
        with r.pipeline() as pipe:
            try:
                pipe.watch(st.scan_key(scan_id))
                (scan,) = st.load_states(pipe, [scan_id])
                pipe.multi()
                if scan is None:
                    pipe.zrem(st.ACTIVE, scan_id)
                    pipe.execute()
                    continue
                if scan.done:
                    pipe.zadd(st.ACTIVE, {scan_id: time.time() + worker_settings().sweep_after})
                    pipe.execute()
                    unstored.append(scan_id)
                    continue
                message = (f"no answer within {worker_settings().sweep_after:g} s (a lost or unserved task); "
                           "the scan was closed by the sweeper")
                for entry in scan.pending:
                    entry["errors"] += [{"payload_id": entry["record"]["payload_id"], "plugin": name,
                                         "kind": "timeout", "message": message} for name, *_ in entry["plan"]]
                    entry["plan"] = []
                absorb_wave(r, scan, {})
                scan.done = True
                commit(pipe, [scan])
                # The wave's references and answers go too: a plugin task still queued for it then
                # finds nothing to do, and a late collector changes nothing. (The wave's other scans
                # share this deadline: this round or the next closes them.)
                pipe.delete(st.wave_key(scan.wave))
                pipe.execute()
                closed.append(scan_id)
            except redis.WatchError:
                continue  # answered meanwhile
    send_store(app, closed + unstored)
    if closed:
        log.warning("sweeper closed %d overdue scan(s): %s", len(closed), ", ".join(closed))
    if unstored:
        log.warning("sweeper sent %d finished but unstored scan(s) to the store: %s", len(unstored),
                    ", ".join(unstored))
    return closed + unstored
