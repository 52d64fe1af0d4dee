"""A scan's state between two tasks, in Redis: ``stoq:scan:<scan_id>`` (its budget, its finished
records, the wave in flight) and its place in the sweeper's schedule (``stoq:active``: scan id ->
when its wave, or, finished, its store, is overdue)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from stoq.limits import Budget, Limits
from stoq.tasks.plumbing import BLOB_TTL, PREFIX, TTL, dumps
from stoq.tasks.settings import worker_settings

ACTIVE = PREFIX + "active"


def scan_key(scan_id: str) -> str:
    return f"{PREFIX}scan:{scan_id}"


@dataclass(slots=True)
class ScanState:
    """A scan between two tasks: its budget, the records already finished (in ``results`` order), and
    the wave in flight (``pending``: records begun by the publisher, with their errors and plans).
    ``wave`` is a fresh token per wave: an answer for any other wave (a late or duplicated collector) is
    ignored."""

    scan_id: str
    date: str
    source: dict[str, Any]
    profile: str
    notify: str | None
    limits: Limits
    budget: Budget
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    wave: str = ""
    done: bool = False

    def to_json(self) -> bytes:
        return dumps({
            "scan_id": self.scan_id, "date": self.date, "source": self.source, "profile": self.profile,
            "notify": self.notify, "done": self.done, "wave": self.wave,
            "limits": [self.limits.max_depth, self.limits.max_children, self.limits.max_bytes,
                       self.limits.max_seconds],
            "budget": {"children": self.budget.children, "bytes": self.budget.bytes, "seen": self.budget.seen,
                       "started": self.budget.started},
            "results": self.results, "errors": self.errors, "pending": self.pending,
        })

    @classmethod
    def from_json(cls, data: bytes) -> ScanState:
        d = orjson.loads(data)
        limits = Limits(*d["limits"])
        b = d["budget"]
        budget = Budget(limits, b["children"], b["bytes"], b["seen"], b.get("started", time.time()))
        return cls(d["scan_id"], d["date"], d["source"], d["profile"], d["notify"], limits, budget,
                   d["results"], d["errors"], d["pending"], d["wave"], d["done"])


def load_states(r: redis.Redis | Any, scan_ids: list[str]) -> list[ScanState | None]:
    if not scan_ids:
        return []
    raws: list[bytes | None] = r.mget([scan_key(s) for s in scan_ids])  # type: ignore[assignment]
    return [None if raw is None else ScanState.from_json(raw) for raw in raws]


def commit(pipe: Any, scans: list[ScanState]) -> None:
    """Writes the scans' states in the open transaction; keeps the sweeper's schedule. A finished
    scan stays registered until the store has saved it (``forget_stored`` removes it)."""
    deadline = time.time() + worker_settings().sweep_after
    for scan in scans:
        pipe.set(scan_key(scan.scan_id), scan.to_json(), ex=TTL)
    if scans:  # one command for the batch, not one per scan
        pipe.zadd(ACTIVE, dict.fromkeys((scan.scan_id for scan in scans), deadline))


def forget_stored(pipe: Any, scans: list[ScanState], docs: list[dict[str, Any]]) -> None:
    """In ``pipe``: hands each stored document to the ``stoq submit`` waiting for it, then forgets the
    scans' states (a few commands per batch, not per scan)."""
    by_notify: dict[str, list[bytes]] = {}
    for scan, doc in zip(scans, docs):
        if scan.notify:
            by_notify.setdefault(scan.notify, []).append(dumps(doc))
    for notify, payloads in by_notify.items():
        pipe.rpush(notify, *payloads)
        pipe.expire(notify, BLOB_TTL)
    if scans:
        pipe.delete(*(scan_key(scan.scan_id) for scan in scans))
        pipe.zrem(ACTIVE, *(scan.scan_id for scan in scans))
