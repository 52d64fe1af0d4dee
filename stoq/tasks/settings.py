"""The settings of a worker process, read once: a module of its own, so that every module of
``stoq.tasks`` (the pipeline, the sweeper, the start-up checks, the result store) reads them without
importing another's."""

from __future__ import annotations

from stoq.config import Settings, load_settings

_SETTINGS: Settings | None = None


def worker_settings() -> Settings:
    """This process's settings (stoq.toml, STOQ_*): the archive, the store, the cluster's knobs."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = load_settings()
    return _SETTINGS
