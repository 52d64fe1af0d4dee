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
:class:`stoq.metrics_live.LiveCollector` reads them from the broker and the SQL store when a scrape
asks.
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
    (a ``stoq.metrics_live.LiveCollector``) when given."""
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
