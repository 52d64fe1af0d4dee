"""The hard time limit of a plugin run in a Celery worker process.

The soft limit (``stoq.runner``) raises inside Python code; native code that never returns to the
interpreter, or holds the GIL, needs another process to stop it. Each pool process forks a small
guard at start-up. Before a plugin runs, the worker writes its hard deadline (the plugin's time limit
plus ``HARD_GRACE``) into a shared page; the guard kills the worker with SIGKILL when the deadline
passes. Celery then sees a lost worker: the batch is redelivered (late acknowledgement, reject on
worker loss) and the payload's attempts are counted (``stoq.tasks.adapter``), so a payload that hangs
every time is quarantined like one that crashes.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import time
from typing import Callable

from stoq.engine import Activity
from stoq.runner import HARD_GRACE

POLL = 0.2
_SLOT = struct.Struct("d")


class Guard(Activity):
    """The worker's side: ``enter`` arms the deadline, ``leave`` disarms it."""

    def __init__(self, timeout_for: Callable[[str], float] = lambda plugin: 60.0) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self._worker = os.getpid()
        self.timeout_for = timeout_for
        self.current = ("", "")
        pid = os.fork()
        if pid == 0:
            try:
                self._watch()
            finally:
                os._exit(0)
        self.pid = pid

    def arm(self, seconds: float) -> None:
        _SLOT.pack_into(self._page, 0, time.monotonic() + seconds + HARD_GRACE)

    def enter(self, plugin: str, sha256: str) -> None:
        self.current = (plugin, sha256)
        self.arm(self.timeout_for(plugin))

    def leave(self) -> None:
        _SLOT.pack_into(self._page, 0, 0.0)
        self.current = ("", "")

    def _watch(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while os.getppid() == self._worker:
            (deadline,) = _SLOT.unpack_from(self._page, 0)
            if deadline and time.monotonic() > deadline:
                os.kill(self._worker, signal.SIGKILL)
                return
            time.sleep(POLL)


_GUARD: Guard | None = None


def process_guard() -> Guard:
    """This process's guard (forked on first use, so each pool process has its own)."""
    global _GUARD
    if _GUARD is None or _GUARD._worker != os.getpid():
        _GUARD = Guard()
    return _GUARD
