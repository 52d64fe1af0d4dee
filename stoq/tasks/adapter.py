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
(``state.put_answer``), not to Celery's result backend; the task that completes the wave sends
``stoq.collect``.

Isolation inside a batch: the first delivery runs the batch straight through. A redelivered batch
(its worker died: a crash, or the guard's hard time limit) runs *carefully*: each payload's start and
answer are recorded in Redis, answers already given are reused, and a payload that was started
``quarantine_after - 1`` times in careful runs without answering (so it went down with its worker on
every attempt) gets a ``crash`` error instead of another run.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from celery import Celery
from kombu import Queue

from stoq.plugin import SCAN_CATEGORIES
from stoq.registry import Registry
from stoq.tasks import pipeline
from stoq.tasks import state as st
from stoq.tasks.guard import Guard, process_guard

DEFAULT_QUEUE = pipeline.DEFAULT_QUEUE
COLLECT_QUEUE = pipeline.COLLECT_QUEUE

log = logging.getLogger(__name__)


def task_name(category: str, name: str) -> str:
    return f"stoq.{category}.{name}"


def redelivered(task: Any) -> bool:
    """Whether the broker says this delivery of ``task`` is not its first (see ``state.careful_for``)."""
    return bool((task.request.delivery_info or {}).get("redelivered"))


def run_batch(app: Celery, plugin: str, task_id: str | None, again: bool, profile_id: str, wave_id: str,
              part: int, parts: int) -> None:
    """Runs ``plugin`` on each payload of the wave's ``part``; records one answer per reference, in
    order; sends the collector when this part completes the wave."""
    r = pipeline.redis_client(app)
    raw = r.hget(st.wave_key(wave_id), st.part_field(part))
    if raw is None:  # a redelivery, or a duplicate, after the wave was settled: done already
        log.warning("%s: wave %s is settled already (or expired); nothing to do", plugin, wave_id)
        return
    refs = orjson.loads(raw)  # type: ignore[arg-type]
    eng = pipeline.engine_for(r, profile_id)
    g = process_guard()
    g.timeout_for = eng.timeout_for
    rerun = st.careful_for(r, task_id, again, st.Careful, pipeline.worker_settings().quarantine_after)
    if rerun is None:
        answers = [eng.run_on(plugin, ref, g) for ref in refs]
    else:
        answers = careful(rerun, eng, plugin, refs, g)
    eng.archive.flush()  # the children's index rows, once per batch, before anyone reads the answers
    if st.put_answer(r, wave_id, part, parts, orjson.dumps(answers)):
        app.send_task("stoq.collect", args=(wave_id,), queue=COLLECT_QUEUE, argsrepr=f"(wave {wave_id})",
                      kwargsrepr="")


def careful(rerun: st.Careful, eng: Any, plugin: str, refs: list[dict[str, Any]], g: Guard) -> list[dict[str, Any]]:
    """A redelivered batch, one recorded payload at a time (see the module's docstring)."""
    answers = []
    for ref in refs:
        pid = ref["payload_id"]
        recorded = rerun.answer(pid)
        if recorded is not None:
            answers.append(orjson.loads(recorded))
            continue
        quarantined = rerun.before(pid)
        if quarantined is not None:
            answers.append({"payload_id": pid, "error": {"payload_id": pid, "plugin": plugin, "kind": "crash",
                                                         "message": quarantined}})
            continue
        answer = eng.run_on(plugin, ref, g)
        rerun.after(pid, orjson.dumps(answer))
        answers.append(answer)
    return answers


class ConnectorFailed(Exception):
    """A connector plugin failed on a batch of documents (the task retries it)."""


def register_connector(app: Celery, name: str) -> str:
    """The task ``stoq.connector.<name>`` on queue ``<name>``: reads finished documents from the result
    store by scan id and gives them to the connector plugin configured by the submission's profile.
    Delivery is at least once: a retried batch may reach the sink twice."""
    task = f"stoq.connector.{name}"

    def run(profile_id: str, scan_ids: list[str]) -> None:
        from stoq.connectors import deliver
        from stoq.tasks.connect import result_store

        connector = pipeline.connector_for(pipeline.redis_client(app), profile_id, name)
        docs = [doc for doc in map(result_store().get, scan_ids) if doc is not None]
        failures = deliver([connector], docs)
        if failures:
            raise ConnectorFailed(failures[0])

    run.__doc__ = f"Gives finished documents to the {name!r} connector."
    app.task(name=task, queue=name, acks_late=True, reject_on_worker_lost=True, ignore_result=True,
             autoretry_for=(ConnectorFailed,), retry_backoff=True, retry_backoff_max=300, max_retries=10)(run)
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
            pipeline.retrying(_plugin, run_batch, app, _plugin, self.request.id, redelivered(self), profile_id, wave_id,
                              part, parts)

        run.__doc__ = cls.summary()
        app.task(name=name, queue=cls.name, bind=True, acks_late=True, reject_on_worker_lost=True,
                 ignore_result=True)(run)
        names[cls.name] = name
    app.conf.stoq_plugin_tasks = names
    app.conf.task_routes = {name: {"queue": plugin} for plugin, name in names.items()}
    # A worker started without -Q consumes every queue declared here: all plugins, and stoq's own.
    app.conf.task_default_queue = DEFAULT_QUEUE
    app.conf.task_queues = [Queue(DEFAULT_QUEUE), Queue(COLLECT_QUEUE)] + [Queue(plugin) for plugin in sorted(names)]
    return names
