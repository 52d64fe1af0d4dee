"""Prometheus metrics (issue 19): what stoq counts, and the registry a scrape reads.

Recorded in every process that scans (the embedded pool's forked workers, Celery's prefork pool
processes, their parents), in ``prometheus_client``'s **multiprocess mode**: each process writes its
counters to memory-mapped files of its own in the directory ``PROMETHEUS_MULTIPROC_DIR``, and a scrape
sums the files of every process, dead ones included (a counter never goes back). Nothing is recorded
unless that directory is set when a process first records, so a plain ``stoq scan`` pays one check
per hook; the processes that serve metrics (``stoq serve``'s ``/metrics``, a worker with
``metrics_port``) set it up first with :func:`ensure_dir`, before they fork. Without
``prometheus-client`` installed every hook is a no-op and serving says so.

The hooks, few and cheap (see docs/metrics.md for each metric):

- :func:`plugin_run`, from ``Engine.run_one`` (both modes): a run and its duration per plugin;
- :func:`stored`, from the result store's writers (``Store.save``, ``SqliteWriter.save``): scans,
  payloads, errors by plugin and kind, flags, counted from the rows written, so that they are the
  documents' own numbers;
- :func:`scans`, from the ledger: scans submitted and given up.

The gauges that describe the present (queue depths, the ledger's scans by state) are not recorded:
:class:`LiveCollector` reads them from the broker and the SQL store when a scrape asks.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

#: The variable ``prometheus_client`` reads: the directory of the per-process files.
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Plugin run durations, in seconds: from a hash of a small text to a plugin at the default time limit.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Distinct values of a label (plugin, flag, kind) one process records; later ones count as ``other``.
#: Flags are plugins' own tokens: this bounds what a plugin raising odd ones can cost Prometheus.
MAX_LABELS = 256
OTHER = "other"
#: The ledger's states, always reported (0 when none), so that a dashboard has every series.
LEDGER_STATES = ("pending", "finished", "failed")

_UNSET: Any = object()
_metrics: Any = _UNSET  # _Metrics, None (disabled in this process), or _UNSET (not decided yet)
_created: tuple[int, str] | None = None  # (pid, directory) of a private directory made by ensure_dir


def available() -> bool:
    """Whether ``prometheus-client`` is installed (the ``web`` extra)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class _Metrics:
    """The metric objects of this process tree, unregistered (a scrape reads the files, not them)."""

    def __init__(self) -> None:
        import prometheus_client as pc
        from prometheus_client import values

        if not getattr(values.ValueClass, "_multiprocess", False):  # imported before the directory was set
            values.ValueClass = values.MultiProcessValue()
        self.runs = pc.Counter("stoq_plugin_runs", "Plugin runs on a payload (declined ones excluded).",
                               ["plugin"], registry=None)
        self.duration = pc.Histogram("stoq_plugin_duration_seconds", "Seconds of one plugin run on one payload.",
                                     ["plugin"], buckets=BUCKETS, registry=None)
        self.errors = pc.Counter("stoq_plugin_errors", "Error entries of stored documents, by plugin and kind.",
                                 ["plugin", "kind"], registry=None)
        self.flags = pc.Counter("stoq_flags", "Flags on the payloads of stored documents.", ["flag"], registry=None)
        self.payloads = pc.Counter("stoq_payloads", "Payloads (results entries) of stored documents.", registry=None)
        self.scans = pc.Counter("stoq_scans", "Scans by event: submitted (the ledger), finished (stored), "
                                "failed (given up by the ledger).", ["state"], registry=None)
        self._per_plugin: dict[str, tuple[Any, Any]] = {}
        self._seen: dict[str, set[str]] = {}

    def bounded(self, label: str, value: str) -> str:
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= MAX_LABELS:
            return OTHER
        seen.add(value)
        return value

    def plugin_run(self, name: str, seconds: float) -> None:
        children = self._per_plugin.get(name)
        if children is None:
            label = self.bounded("plugin", name)
            children = self._per_plugin[name] = (self.runs.labels(label), self.duration.labels(label))
        children[0].inc()
        children[1].observe(seconds)


def _load() -> _Metrics | None:
    path = os.environ.get(ENV)
    if not path:
        return None
    if not (os.path.isdir(path) and os.access(path, os.W_OK)):
        log.warning("metrics are off: %s=%s is not a writable directory", ENV, path)
        return None
    try:
        return _Metrics()
    except ImportError:
        return None


def _current() -> _Metrics | None:
    global _metrics
    if _metrics is _UNSET:
        _metrics = _load()
    return _metrics


def enabled() -> bool:
    """Whether this process records metrics (``prometheus-client`` installed and ``ENV`` set)."""
    return _current() is not None


# -- hooks ---------------------------------------------------------------------------------------------

def plugin_run(name: str, seconds: float) -> None:
    """One run of plugin ``name`` on one payload, ending in a result or an error (``Engine.run_one``)."""
    m = _metrics if _metrics is not _UNSET else _current()
    if m is None:
        return
    try:
        m.plugin_run(name, seconds)
    except Exception:  # metrics never fail a scan
        log.warning("recording a plugin run failed", exc_info=True)


def stored(rows: Sequence[Sequence[tuple[Any, ...]]]) -> None:
    """Documents just written to the result store, as ``stoq.rows.document_rows`` gave their rows
    (scans, payloads, scan_payloads, plugin_results, scan_errors). A document saved twice (a
    redelivered collector) is counted twice."""
    m = _metrics if _metrics is not _UNSET else _current()
    if m is None:
        return
    try:
        import orjson

        scans, _, edges, _, errors = rows
        m.scans.labels("finished").inc(len(scans))
        m.payloads.inc(len(edges))
        kinds = Counter((m.bounded("plugin", row[2]), m.bounded("kind", row[3])) for row in errors)
        for (plugin, kind), n in kinds.items():
            m.errors.labels(plugin, kind).inc(n)
        flags: Counter[str] = Counter()
        for edge in edges:
            if edge[11] != "[]":  # JSON text; most payloads have no flag
                flags.update(orjson.loads(edge[11]))
        for flag, n in flags.items():
            m.flags.labels(m.bounded("flag", flag)).inc(n)
    except Exception:
        log.warning("recording stored documents failed", exc_info=True)


def scans(state: str, n: int = 1) -> None:
    """``n`` scans reached ``state`` in the ledger: ``submitted`` or ``failed``."""
    m = _metrics if _metrics is not _UNSET else _current()
    if m is None or n <= 0:
        return
    try:
        m.scans.labels(state).inc(n)
    except Exception:
        log.warning("recording scans failed", exc_info=True)


def process_dead(pid: int | None) -> None:
    """Bookkeeping for a recording process that ended (``mark_process_dead``): its live gauges' files
    go. Counters and histograms stay: their totals must not go back. Called by the embedded pool for
    each worker it reaps, and in each Celery pool process as it exits."""
    if pid is None or not os.environ.get(ENV) or _current() is None:
        return
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:
        log.warning("mark_process_dead(%s) failed", pid, exc_info=True)


# -- set-up and serving --------------------------------------------------------------------------------

def ensure_dir() -> str | None:
    """Turns multiprocess mode on for this process and the ones it will fork or start: ``ENV`` as
    given (created if missing), else a private directory made here and removed when this process
    exits. Call it before forking. None when ``prometheus-client`` is not installed."""
    global _metrics, _created
    if not available():
        return None
    path = os.environ.get(ENV)
    if path:
        os.makedirs(path, exist_ok=True)
    else:
        path = tempfile.mkdtemp(prefix="stoq-metrics-")
        os.environ[ENV] = path
        _created = (os.getpid(), path)
        atexit.register(cleanup)
    _metrics = _UNSET  # decided again, now with the directory
    return path


def cleanup() -> None:
    """Removes the private directory :func:`ensure_dir` made, in the process that made it only."""
    global _created, _metrics
    if _created is not None and _created[0] == os.getpid():
        shutil.rmtree(_created[1], ignore_errors=True)
        if os.environ.get(ENV) == _created[1]:
            del os.environ[ENV]
        _created = None
        _metrics = _UNSET


def registry(live: Any = None) -> Any:
    """A registry for one scrape: every process's files (``MultiProcessCollector``), and ``live``
    (a :class:`LiveCollector`) when given."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    if os.environ.get(ENV):
        MultiProcessCollector(reg)
    if live is not None:
        reg.register(live)
    return reg


def exposition(live: Any = None) -> tuple[bytes, str]:
    """(body, content type) of a scrape in the Prometheus text format."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry(live)), CONTENT_TYPE_LATEST


def serve(port: int, address: str, live: Any = None) -> Any:
    """Serves ``/metrics`` on ``address:port`` from a daemon thread of this process; returns the
    server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, address, registry=_ScrapeRegistry(live))
    return server


class _ScrapeRegistry:
    """What ``start_http_server`` collects from: a fresh multiprocess registry for every scrape, as
    ``prometheus_client`` asks (no state kept between scrapes)."""

    def __init__(self, live: Any) -> None:
        self.live = live

    def collect(self) -> Iterator[Any]:
        return registry(self.live).collect()

    def restricted_registry(self, names: Iterable[str]) -> Any:  # ?name[]=... on the URL
        return registry(self.live).restricted_registry(names)


# -- gauges read at scrape time ------------------------------------------------------------------------

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
