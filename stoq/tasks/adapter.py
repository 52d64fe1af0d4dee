"""The one adapter that makes any scan plugin a Celery task.

Each installed scan plugin becomes the task ``stoq.<category>.<name>`` (``stoq.worker.yara``,
``stoq.extractor.decompress``) routed to the queue named after the plugin, so ``celery -A stoq worker
-Q yara`` serves YARA alone. The task is a thin shell (STYLE 1): it takes a submission's profile id and
its part of a wave (``stoq:wave:<id>`` holds a batch of payload *references*, never bytes), fetches each
payload from the shared archive, and runs the plugin through the same engine code as the embedded mode
(``Engine.run_on``: options, ``accepts``, soft time limit, error capture, the text rule). Children are
written to the archive and answered as references.

A reference is ``{"payload_id", "sha256", "filename", "mime", "depth", "meta", "overrides", "rules",
"save", "bytes_left", "source_path"}``; the answer, per reference, is ``{"payload_id", "skipped"|"result"|"error",
"flags", "children", "extracted_bytes" (when the plugin says)}``. The answers go to the wave's hash
(``join.put_answer``), not to Celery's result backend; the task that completes the wave sends
``stoq.collect``. The task's body is step 2 of the life of a scan, ``pipeline.run_part``: blame and
quarantine by content (``stoq.tasks.guard``), the answers of a redelivered batch reused.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from stoq.plugin import SCAN_CATEGORIES
from stoq.registry import Registry
from stoq.tasks import pipeline
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE, declared_queue
from stoq.tasks.engines import connector_for
from stoq.tasks.plumbing import redis_client
from stoq.tasks.retry import retrying

log = logging.getLogger(__name__)


def task_name(category: str, name: str) -> str:
    return f"stoq.{category}.{name}"


def redelivered(task: Any) -> bool:
    """Whether the broker says this delivery of ``task`` is not its first (see ``plumbing.task_record``)."""
    return bool((task.request.delivery_info or {}).get("redelivered"))


class ConnectorFailed(Exception):
    """A connector plugin failed on a batch of documents (the task retries it)."""


#: The connector task's retries: countdown ``2 ** retries`` seconds (at most ``CONNECTOR_BACKOFF_MAX``),
#: then the documents still undelivered go to the store's outbox, which the workers' catch-up drains.
CONNECTOR_MAX_RETRIES = 10
CONNECTOR_BACKOFF_MAX = 300


def register_connector(app: Celery, name: str) -> str:
    """The task ``stoq.connector.<name>`` on queue ``<name>``: reads finished documents from the result
    store by scan id and gives them to the connector plugin configured by the submission's profile.
    Delivery is at least once: a failed batch is retried with exponential backoff (only the documents
    not delivered, when the connector says which), and after ``CONNECTOR_MAX_RETRIES`` the rest is kept
    in the store's outbox (``stoq.outbox``) for the workers' catch-up."""
    task = f"stoq.connector.{name}"

    def run(self: Any, profile_id: str, scan_ids: list[str]) -> None:
        from stoq.connectors import deliver_each, stored_options
        from stoq.outbox import Outbox
        from stoq.tasks.connect import result_store

        connector = connector_for(redis_client(app), profile_id, name)
        docs = [doc for doc in map(result_store().get, scan_ids) if doc is not None]
        (out,) = deliver_each([connector], docs)
        if not out.failed:
            return
        if self.request.retries >= CONNECTOR_MAX_RETRIES:
            Outbox(result_store()).defer(name, stored_options(connector), out.failed, out.error or "failed")
            log.error("%s; %d document(s) kept in the store's outbox", out.message(), len(out.failed))
            return
        countdown = min(2 ** self.request.retries, CONNECTOR_BACKOFF_MAX)
        raise self.retry(args=(profile_id, out.failed), exc=ConnectorFailed(out.message()), countdown=countdown)

    run.__doc__ = f"Gives finished documents to the {name!r} connector."
    app.task(name=task, queue=name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             max_retries=None)(run)
    return task


def register_plugins(app: Celery, registry: Registry | None = None) -> dict[str, str]:
    """Registers a task per loadable scan plugin; returns plugin name -> task name."""
    registry = registry if registry is not None else Registry.discover()
    names: dict[str, str] = {}
    for entry in registry.entries.values():
        cls = entry.cls
        if cls is not None and cls.category == "connector":
            names[cls.name] = register_connector(app, cls.name)
            continue
        if cls is None or cls.category not in SCAN_CATEGORIES:
            continue
        name = task_name(cls.category, cls.name)

        def run(self: Any, profile_id: str, wave_id: str, part: int, parts: int, _plugin: str = cls.name) -> None:
            retrying(_plugin, pipeline.run_part, app, _plugin, self.request.id, redelivered(self), profile_id,
                     wave_id, part, parts)

        run.__doc__ = cls.summary()
        app.task(name=name, queue=cls.name, bind=True, acks_late=True, reject_on_worker_lost=True,
                 ignore_result=True)(run)
        names[cls.name] = name
    app.conf.stoq_plugin_tasks = names
    app.conf.task_routes = {name: {"queue": plugin} for plugin, name in names.items()}
    # A worker started without -Q consumes every queue declared here: all plugins, and stoq's own.
    app.conf.task_default_queue = DEFAULT_QUEUE
    app.conf.task_queues = [declared_queue(app, q) for q in (DEFAULT_QUEUE, COLLECT_QUEUE, *sorted(names))]
    return names
