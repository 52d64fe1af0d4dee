"""The hard time limit of a plugin run in a Celery worker process, and who is to blame when it dies.

The soft limit (``stoq.runner``) raises inside Python code; native code that never returns to the
interpreter, or holds the GIL, needs another process to stop it. Each pool process forks a small
guard at start-up. Before a plugin runs, the worker writes its hard deadline (the plugin's time limit
plus ``HARD_GRACE``) and what it runs (plugin name, payload sha256) into a shared page; the guard kills
the worker with SIGKILL when the deadline passes. Celery then sees a lost worker: the batch is
redelivered (late acknowledgement, reject on worker loss).

Blame. The guard outlives its worker, so it is the one that says what the death was:

- ``timeout``: the guard killed it (the hard limit passed);
- ``fatal``: a fatal signal raised in the worker itself (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT):
  ``faulthandler`` writes to a pipe only the guard reads, so the guard sees it;
- ``outside``: neither (SIGKILL from the OOM killer or an operator, a worker shut down): not the
  payload's doing, as far as anyone can tell.

It charges the death to the (plugin, sha256) in the page, the one running in that process at that
moment, and to nothing when the page is empty (the worker died between plugin runs). The record is
keyed by content (``stoq:blame:<plugin>:<sha256>``), not by task or batch, so a poison file costs its
deaths once however many copies are submitted. A payload is quarantined (``verdicts``) once
``fatal + timeout + max(0, outside - OUTSIDE_FREE)`` reaches the ``quarantine_after`` setting: an
outside kill is retried before it counts.
"""

from __future__ import annotations

import faulthandler
import fcntl
import mmap
import os
import signal
import struct
import time
from typing import Callable, Iterable

import redis

from stoq.engine import Activity
from stoq.runner import HARD_GRACE

POLL = 0.2
#: Outside kills of a payload's run that are forgiven (retried without being counted).
OUTSIDE_FREE = 1
#: How long a blame record lives: long enough for every copy of a batch, not for ever.
BLAME_TTL = 7 * 24 * 3600
BLAME_PREFIX = "stoq:blame:"
CAUSES = ("fatal", "timeout", "outside")
# deadline (monotonic seconds, 0: disarmed), time limit, then the plugin name and sha256, NUL padded
_PAGE = struct.Struct("dd64s64s")


def blame_key(plugin: str, sha256: str) -> str:
    return f"{BLAME_PREFIX}{plugin}:{sha256}"


def charge(r: redis.Redis, plugin: str, sha256: str, cause: str, limit: float = 0.0) -> None:
    """Counts one death of a worker while ``plugin`` ran on ``sha256``; ``cause`` is one of ``CAUSES``."""
    key = blame_key(plugin, sha256)
    with r.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, cause, 1)
        if cause == "timeout":
            pipe.hset(key, "limit", f"{limit:g}")
        pipe.expire(key, BLAME_TTL)
        pipe.execute()


def charges(record: dict[str, int]) -> int:
    """The deaths that count against a payload (see the module's docstring)."""
    return record.get("fatal", 0) + record.get("timeout", 0) + max(0, record.get("outside", 0) - OUTSIDE_FREE)


def verdicts(r: redis.Redis, plugin: str, sha256s: Iterable[str], limit: int,
             time_limit: float | None = None) -> dict[str, tuple[str, str]]:
    """sha256 -> (error kind, message) for each of ``sha256s`` quarantined for ``plugin``: one round
    trip, whatever the batch's size. ``time_limit``: the plugin's soft limit in this run; hard-limit
    kills under a shorter limit (another profile's) do not count against a run given longer."""
    wanted = sorted(set(sha256s))
    if not wanted:
        return {}
    with r.pipeline(transaction=False) as pipe:
        for sha256 in wanted:
            pipe.hgetall(blame_key(plugin, sha256))
        raw: list[dict[bytes, bytes]] = pipe.execute()
    out: dict[str, tuple[str, str]] = {}
    for sha256, fields in zip(wanted, raw):
        record = {k.decode(): int(v) for k, v in fields.items() if k != b"limit"}
        if time_limit is not None and b"limit" in fields and time_limit > float(fields[b"limit"]):
            record.pop("timeout", None)
        n = charges(record)
        if n < limit:
            continue
        causes = ", ".join(f"{record[c]} {c}" for c in CAUSES if record.get(c))
        if record.get("timeout", 0) and record["timeout"] >= record.get("fatal", 0):
            kind = "timeout"
            what = f"exceeded its {fields.get(b'limit', b'?').decode()} s limit in native code; worker killed"
        else:
            kind, what = "crash", "the worker process died"
        out[sha256] = (kind, f"{plugin} on this content: {what} {n} times; quarantined ({causes})")
    return out


class Guard(Activity):
    """The worker's side: ``enter`` arms the deadline and says what runs, ``leave`` disarms it. ``r``:
    where the guard charges a death (None: nowhere, the hard limit only)."""

    def __init__(self, timeout_for: Callable[[str], float] = lambda plugin: 60.0,
                 r: redis.Redis | None = None) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self._worker = os.getpid()
        self.timeout_for = timeout_for
        self.current = ("", "")
        self.redis = r
        faults, self._faults = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(self._faults)
                self._watch(faults)
            finally:
                os._exit(0)
        os.close(faults)
        os.set_inheritable(self._faults, False)
        # a fatal signal writes its traceback here; the guard reads it as "the worker's own fault"
        faulthandler.enable(file=self._faults, all_threads=False)
        self.pid = pid

    def arm(self, seconds: float) -> None:
        plugin, sha256 = self.current
        _PAGE.pack_into(self._page, 0, time.monotonic() + seconds + HARD_GRACE, seconds,
                        plugin.encode()[:64], sha256.encode()[:64])

    def enter(self, plugin: str, sha256: str) -> None:
        self.current = (plugin, sha256)
        self.arm(self.timeout_for(plugin))

    def leave(self) -> None:
        _PAGE.pack_into(self._page, 0, 0.0, 0.0, b"", b"")
        self.current = ("", "")

    def _watch(self, faults: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        fcntl.fcntl(faults, fcntl.F_SETFL, fcntl.fcntl(faults, fcntl.F_GETFL) | os.O_NONBLOCK)
        killed = False
        while os.getppid() == self._worker:
            deadline = _PAGE.unpack_from(self._page, 0)[0]
            if deadline and time.monotonic() > deadline:
                os.kill(self._worker, signal.SIGKILL)
                killed = True
                break
            time.sleep(POLL)
        while os.getppid() == self._worker:  # SIGKILL is not instant: wait until the worker is gone
            time.sleep(0.01)
        _, limit, plugin, sha256 = _PAGE.unpack_from(self._page, 0)
        if self.redis is None or not plugin.rstrip(b"\0"):
            return  # died between plugin runs (or a plain exit): no payload to blame
        try:
            fatal = bool(os.read(faults, 1))
        except BlockingIOError:
            fatal = False
        cause = "timeout" if killed else "fatal" if fatal else "outside"
        try:
            charge(self.redis, plugin.rstrip(b"\0").decode(), sha256.rstrip(b"\0").decode(), cause, limit)
        except redis.RedisError:
            pass  # the batch is redelivered all the same; this death goes uncounted


_GUARD: Guard | None = None


def process_guard(r: redis.Redis | None = None) -> Guard:
    """This process's guard (forked on first use, so each pool process has its own). ``r``: the
    Redis client its guard charges deaths to (inherited through the fork)."""
    global _GUARD
    if _GUARD is None or _GUARD._worker != os.getpid():
        _GUARD = Guard(r=r)
    return _GUARD
