"""stoq: distributed file-analysis automation (hash, type, archive, analyse, extract, recursively).

``import stoq`` is cheap and does not import Celery. ``celery -A stoq`` finds the Celery app through
the lazy ``app``/``celery`` attributes below (it is built in ``stoq.tasks.app``).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from stoq.tasks.app import app

        return app
    raise AttributeError(f"module 'stoq' has no attribute {name!r}")
