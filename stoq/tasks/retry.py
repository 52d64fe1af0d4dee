"""Transient failures inside a task: a broker, Redis or database connection that may come back."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

log = logging.getLogger("stoq.tasks.pipeline")

#: Seconds slept before each new try of a task body that met a transient broker or database error.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a broker, Redis or database connection failure that may pass (a restart, a
    pause, a failover), rather than a fault of the work itself."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import OperationalError as DatabaseError

    seen: BaseException | None = exc
    for _ in range(4):  # StoreError wraps the driver's error
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, BrokerError, DatabaseError, ConnectionError)):
            return True
        if type(seen).__name__ == "OperationalError":  # psycopg2's, without importing it here
            return True
        seen = seen.__cause__ if seen is not None else None
    return False


def retrying(what: str, body: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs a task body, again after each transient failure (``transient``), ``RETRY_DELAYS`` apart;
    the last failure is raised (the ledger then publishes the scan again). Every body is safe to
    run again: its writes are idempotent or guarded by wave tokens."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            if delay is None or not transient(exc):
                raise
            log.warning("%s: %s: %s; trying again in %g s", what, type(exc).__name__, exc, delay)
            time.sleep(delay)
