"""A worker's Prometheus metrics without the web server (setting ``metrics_port``; docs/metrics.md).

When ``metrics_port`` is set, the worker's main process turns multiprocess mode on before it forks its
pool (``worker_init``: ``PROMETHEUS_MULTIPROC_DIR`` as given, else a private directory removed at
shutdown), serves ``/metrics`` from a thread once the worker is ready (``worker_ready``): every pool
process's counters, summed, and the gauges read at scrape time (queue depths from the broker, the
ledger from the result store). Each pool process marks itself dead as it exits
(``worker_process_shutdown``). Without ``metrics_port`` these handlers do nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from stoq import metrics
from stoq.metrics_live import LiveCollector

log = logging.getLogger(__name__)

_SERVER: Any = None


def _port() -> int:
    from stoq.tasks.settings import worker_settings

    return worker_settings().metrics_port


@signals.worker_init.connect
def _prepare(sender: Any = None, **_: Any) -> None:
    if _port() and metrics.ensure_dir() is None:
        log.error("metrics_port is set but prometheus-client is not installed (pip install 'stoq-analysis[web]'): "
                  "no metrics are served")


@signals.worker_ready.connect
def _serve(sender: Any = None, **_: Any) -> None:
    global _SERVER
    from stoq.tasks.settings import worker_settings

    settings = worker_settings()
    if not settings.metrics_port or not metrics.available() or _SERVER is not None:
        return
    app = sender.app
    live = LiveCollector(app.conf.broker_url or "", [q.name for q in app.conf.task_queues or ()],
                                 settings.resolved_database_url())
    try:
        _SERVER = metrics.serve(settings.metrics_port, settings.metrics_address, live)
    except OSError as exc:  # the analysis goes on without metrics
        log.warning("cannot serve metrics on %s:%s: %s (another worker sharing %s serves them, or give this one "
                    "its own port)", settings.metrics_address, settings.metrics_port, exc, metrics.ENV)
        return
    log.info("serving metrics on http://%s:%s/metrics from %s", settings.metrics_address, settings.metrics_port,
             os.environ.get(metrics.ENV))


@signals.worker_process_shutdown.connect
def _process_dead(**_: Any) -> None:
    metrics.process_dead(os.getpid())


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    global _SERVER
    if _SERVER is not None:
        _SERVER.shutdown()
        _SERVER = None
    metrics.cleanup()
