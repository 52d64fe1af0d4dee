"""The Celery application. Settings: built-in defaults, then the deployer's ``celeryconfig.py`` if one
is importable (Celery's convention), then ``STOQ_*`` environment variables inside it."""

from __future__ import annotations

import importlib.util
import os

from celery import Celery

DEFAULTS = {
    "broker_url": os.environ.get("STOQ_BROKER_URL") or "redis://127.0.0.1:6379/0",
    "result_backend": os.environ.get("STOQ_RESULT_BACKEND") or "redis://127.0.0.1:6379/1",
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}

app = Celery("stoq")
if importlib.util.find_spec("celeryconfig") is not None:
    app.config_from_object("celeryconfig")
for _key, _value in DEFAULTS.items():
    app.conf.setdefault(_key, _value)

# Every installed scan plugin becomes a task on its own queue (see stoq.tasks.adapter).
from stoq.tasks.adapter import register_plugins  # noqa: E402

PLUGIN_TASKS = register_plugins(app)
