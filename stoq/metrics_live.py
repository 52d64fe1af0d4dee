"""The gauges of the present, read when a scrape asks (issue 19; docs/metrics.md): the depth of the
cluster's queues from the broker (Redis ``LLEN``, RabbitMQ passive ``queue_declare``) and the ledger's
scans by state from the SQL store. Nothing here is recorded by the scanning processes (``stoq.metrics``
is the recording side)."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

#: The ledger's states, always reported (0 when none), so that a dashboard has every series.
LEDGER_STATES = ("pending", "finished", "failed")


def queue_names(registry_: Any = None) -> list[str]:
    """The cluster's queues: stoq's two and one per installed scan plugin and connector (as
    ``stoq.tasks.adapter.register_plugins`` declares them)."""
    from stoq.plugin import SCAN_CATEGORIES
    from stoq.registry import Registry

    reg = registry_ if registry_ is not None else Registry.discover()
    names = {entry.cls.name for entry in reg.entries.values()
             if entry.cls is not None and (entry.cls.category in SCAN_CATEGORIES or entry.cls.category == "connector")}
    return ["stoq", "stoq-collect", *sorted(names)]


#: Kombu's Redis transport keeps a queue's messages of priority 3, 6 and 9 in lists of their own.
_REDIS_PRIORITY_KEYS = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def redis_depths(url: str, queues: Iterable[str], client: Any = None) -> dict[str, int]:
    """Messages waiting in each queue of a Redis broker (LLEN of the queue's lists, every priority)."""
    import redis

    r = client if client is not None else redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    names = list(queues)
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            for suffix in _REDIS_PRIORITY_KEYS:
                pipe.llen(name + suffix)
        lengths = pipe.execute()
    step = len(_REDIS_PRIORITY_KEYS)
    return {name: sum(lengths[i * step:(i + 1) * step]) for i, name in enumerate(names)}


def amqp_depths(url: str, queues: Iterable[str]) -> dict[str, int]:
    """Messages ready in each queue of an AMQP broker (RabbitMQ), by a passive ``queue_declare``; a
    queue not declared yet holds none."""
    from kombu import Connection

    depths: dict[str, int] = {}
    with Connection(url, connect_timeout=5) as conn:
        conn.connect()
        for name in queues:
            channel = conn.channel()
            try:
                depths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except conn.channel_errors:  # 404: never declared
                depths[name] = 0
            finally:
                try:
                    channel.close()
                except Exception:  # closed by the broker after a 404 already
                    pass
    return depths


def ledger_counts(store: Any) -> dict[str, int]:
    """Scans in the ledger by state (``SELECT state, count(*) ... GROUP BY state``)."""
    from sqlalchemy import func, select

    from stoq.tables import SCAN_LEDGER as L

    counts = dict.fromkeys(LEDGER_STATES, 0)
    with store.engine.connect() as conn:
        counts.update((state, n) for state, n in conn.execute(select(L.c.state, func.count()).group_by(L.c.state)))
    return counts


class LiveCollector:
    """The gauges of the present, read when a scrape asks: ``stoq_queue_depth{queue}`` from the broker
    (``broker_url``; none in embedded mode) and ``stoq_ledger_scans{state}`` from the SQL store
    (``database_url``). A source that cannot be read leaves its gauge out of that scrape (logged);
    the scrape itself never fails. No database connection is kept between scrapes (the Celery main
    process forks its pool after)."""

    def __init__(self, broker_url: str = "", queues: Iterable[str] = (), database_url: str = "") -> None:
        self.broker_url = broker_url
        self.queues = list(queues)
        self.database_url = database_url
        self._store: Any = None
        self._redis: Any = None

    def depths(self) -> dict[str, int]:
        url = self.broker_url
        if url.startswith(("redis://", "rediss://", "unix://")):
            if self._redis is None:
                import redis

                self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
            return redis_depths(url, self.queues, self._redis)
        if url.startswith(("amqp://", "amqps://", "pyamqp://")):
            return amqp_depths(url, self.queues)
        return {}

    def ledger(self) -> dict[str, int]:
        from stoq.store import Store

        if self._store is None:
            self._store = Store.open(self.database_url, auto_migrate=False)  # never creates a database
        try:
            return ledger_counts(self._store)
        finally:
            self._store.engine.dispose()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.broker_url and self.queues:
            try:
                depths = self.depths()
            except Exception as exc:
                log.warning("stoq_queue_depth: cannot read the broker (%s: %s)", type(exc).__name__, exc)
            else:
                if depths:
                    family = GaugeMetricFamily("stoq_queue_depth", "Messages waiting in a broker queue.",
                                               labels=["queue"])
                    for name, n in depths.items():
                        family.add_metric([name], n)
                    yield family
        if self.database_url:
            try:
                counts = self.ledger()
            except Exception as exc:
                log.warning("stoq_ledger_scans: cannot read the ledger (%s: %s)", type(exc).__name__, exc)
            else:
                family = GaugeMetricFamily("stoq_ledger_scans", "Scans in the ledger, by state.", labels=["state"])
                for state, n in counts.items():
                    family.add_metric([state], n)
                yield family
