"""The result store as the cluster's connector sees it: one ``Store`` per worker process."""

from __future__ import annotations

import os

from stoq.store import Store
from stoq.tasks.settings import worker_settings

_STORE: tuple[int, Store] | None = None


def result_store() -> Store:
    """The store named by this worker's settings (``STOQ_DATABASE_URL``); a server database must be
    migrated (``stoq db upgrade``) before workers start."""
    global _STORE
    if _STORE is None or _STORE[0] != os.getpid():
        _STORE = (os.getpid(), Store.open(worker_settings().resolved_database_url()))
    return _STORE[1]


def release() -> None:
    """Closes this process's pooled database connections (they reopen on the next use)."""
    if _STORE is not None and _STORE[0] == os.getpid():
        _STORE[1].engine.dispose()
