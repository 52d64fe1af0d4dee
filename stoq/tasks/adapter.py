"""The one adapter that makes any scan plugin a Celery task.

Each installed scan plugin becomes the task ``stoq.<category>.<name>`` (``stoq.worker.yara``,
``stoq.extractor.decompress``) routed to the queue named after the plugin, so ``celery -A stoq worker
-Q yara`` serves YARA alone. The task is a thin shell (STYLE 1): it takes a batch of payload
*references* (never bytes), fetches each payload from the shared archive, and runs the plugin through
the same engine code as the embedded mode (``Engine.run_on``: options, ``accepts``, soft time limit,
error capture, the text rule). Children are written to the archive and returned as references.

A reference is ``{"payload_id", "sha256", "filename", "mime", "depth", "meta", "overrides"}``; the
task returns, per reference, ``{"payload_id", "skipped"|"result"|"error", "flags", "children"}``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from stoq.plugin import SCAN_CATEGORIES
from stoq.registry import Registry

_ENGINE: Any = None
#: The queue of stoq's own tasks (the publisher and the connectors, when they come).
DEFAULT_QUEUE = "stoq"


def engine() -> Any:
    """This worker process's engine, built on first use from the settings (stoq.toml, STOQ_*)."""
    global _ENGINE
    if _ENGINE is None:
        from stoq.config import load_settings
        from stoq.engine import Engine

        _ENGINE = Engine(load_settings())
    return _ENGINE


def task_name(category: str, name: str) -> str:
    return f"stoq.{category}.{name}"


def run_batch(plugin: str, refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs ``plugin`` on each referenced payload; one answer per reference, in order."""
    eng = engine()
    answers = [eng.run_on(plugin, ref) for ref in refs]
    eng.archive.flush()  # the children's index rows, once per batch
    return answers


def register_plugins(app: Celery, registry: Registry | None = None) -> dict[str, str]:
    """Registers a task per loadable scan plugin; returns plugin name -> task name."""
    registry = registry if registry is not None else Registry.discover()
    names: dict[str, str] = {}
    for entry in registry.entries.values():
        cls = entry.cls
        if cls is None or cls.category not in SCAN_CATEGORIES:
            continue
        name = task_name(cls.category, cls.name)

        def run(refs: list[dict[str, Any]], _plugin: str = cls.name) -> list[dict[str, Any]]:
            return run_batch(_plugin, refs)

        run.__doc__ = cls.summary()
        app.task(name=name, queue=cls.name, acks_late=True, reject_on_worker_lost=True)(run)
        names[cls.name] = name
    app.conf.task_routes = {name: {"queue": plugin} for plugin, name in names.items()}
    # A worker started without -Q consumes every queue declared here: all plugins, and stoq's own.
    app.conf.task_default_queue = DEFAULT_QUEUE
    app.conf.task_queues = [Queue(DEFAULT_QUEUE)] + [Queue(plugin) for plugin in sorted(names)]
    return names
