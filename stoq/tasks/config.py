"""The Celery settings of stoq, shared by the workers' app and the submitting client.

Built-in defaults, then the deployer's ``celeryconfig.py`` if one is importable (Celery's convention),
then ``STOQ_*`` environment variables inside it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

#: The queue of stoq's publisher (and Celery's default).
DEFAULT_QUEUE = "stoq"
#: The queue of what follows the plugins: the collector and the store connector. Apart from the
#: publisher's, so that under a large submission finished waves are collected and stored while roots
#: are still being published (a worker round-robins over its queues).
COLLECT_QUEUE = "stoq-collect"


def defaults() -> dict[str, Any]:
    return {
        "broker_url": os.environ.get("STOQ_BROKER_URL") or "redis://127.0.0.1:6379/0",
        "result_backend": os.environ.get("STOQ_RESULT_BACKEND") or "redis://127.0.0.1:6379/1",
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": 24 * 3600,
        "broker_transport_options": {"visibility_timeout": float(os.environ.get("STOQ_VISIBILITY_TIMEOUT", "21600"))},
        "task_default_queue": DEFAULT_QUEUE,
    } | queue_type_settings(os.environ.get("STOQ_QUEUE_TYPE") or "classic")


def queue_type_settings(queue_type: str) -> dict[str, Any]:
    """RabbitMQ: ``quorum`` declares every queue stoq uses as a quorum queue (replicated, durable,
    RabbitMQ 3.8 and later; ``x-queue-type: quorum``); ``classic`` (the default) leaves RabbitMQ's
    default. A queue (and an exchange) keeps the type it was declared with: switching an existing
    cluster means a fresh virtual host, or deleting its queues and the ``stoq`` exchange first. Redis
    ignores it."""
    if queue_type not in ("classic", "quorum"):
        raise ValueError(f"STOQ_QUEUE_TYPE={queue_type!r}: classic or quorum")
    if queue_type == "classic":
        return {}
    # Topic exchanges: Celery's native delayed delivery (how a countdown, the connectors' retry backoff,
    # waits on quorum queues) binds only to those; a direct one makes such a task block its worker.
    return {"task_default_queue_type": queue_type, "task_create_missing_queue_type": queue_type,
            "task_default_exchange_type": "topic", "task_create_missing_queue_exchange_type": "topic"}


def declared_queue(app: Celery, name: str) -> Queue:
    """A queue a worker consumes, of the type the settings ask for (``task_default_queue_type``),
    bound as Celery binds a queue it creates for a client that names it (``stoq submit`` sends by
    queue name): to an exchange of its own name, with its name as routing key. (A ``Queue(name)``
    alone was bound to the default exchange ``stoq`` under the key ``stoq``: on RabbitMQ every task
    sent by a worker then went to every queue.)"""
    quorum = app.conf.get("task_default_queue_type") == "quorum"
    kind = app.conf.get("task_create_missing_queue_exchange_type") or "direct"
    return Queue(name, Exchange(name, type=kind), routing_key=name,
                 queue_arguments={"x-queue-type": "quorum"} if quorum else None)


def deployer_settings() -> dict[str, Any]:
    """The settings in the deployer's ``celeryconfig.py`` (lower-case module attributes), if importable."""
    if importlib.util.find_spec("celeryconfig") is None:
        return {}
    module = importlib.import_module("celeryconfig")
    return {key: value for key, value in vars(module).items()
            if key[:1].islower() and not isinstance(value, types.ModuleType) and not callable(value)}


def make_app(name: str = "stoq") -> Celery:
    """A Celery app with stoq's settings and no tasks registered (enough to send tasks by name):
    stoq's defaults, overridden by ``celeryconfig.py``."""
    app = Celery(name)
    app.conf.update(defaults() | deployer_settings())
    if os.environ.get("STOQ_MEASURE_MESSAGES"):  # tests and benchmarks: the client's messages count too
        from stoq.tasks.checks import watch_message_sizes

        watch_message_sizes(app)
    return app
