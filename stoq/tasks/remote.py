"""``stoq_plugins``: a Celery inspect command that every stoq worker answers with its stoq version, its
plugins (version, category, the distribution that installed each, load errors) and the queues it
consumes, so that ``stoq workers`` (or ``celery -A stoq inspect stoq_plugins``) shows a worker that
lacks a plugin the others have, or runs another version of it.

Registered when ``stoq.tasks.app`` is imported (every worker, and ``celery -A stoq inspect``); answered
in the worker's main process, which has discovered the plugins already.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from celery.worker.control import inspect_command

#: The name operators type: ``celery -A stoq inspect stoq_plugins``.
COMMAND = "stoq_plugins"


def plugins_report() -> dict[str, Any]:
    """This process's stoq version and installed plugins."""
    from stoq.registry import Registry

    try:
        stoq = version("stoq-analysis")
    except PackageNotFoundError:
        stoq = None
    plugins = {}
    for entry in Registry.discover().entries.values():
        cls = entry.cls
        plugins[entry.name] = {"version": cls.version if cls else None, "category": entry.category,
                               "distribution": entry.distribution,
                               "distribution_version": entry.dist.version if entry.dist is not None else None,
                               "error": entry.error}
    return {"stoq": stoq, "python": sys.version.split()[0], "plugins": plugins}


@inspect_command(name=COMMAND)
def stoq_plugins(state: Any, **_: Any) -> dict[str, Any]:
    """A stoq worker's version, plugins (with versions) and the queues it consumes."""
    consumer = getattr(state.consumer, "task_consumer", None)
    queues = sorted(q.name for q in consumer.queues) if consumer else []
    return plugins_report() | {"queues": queues}
