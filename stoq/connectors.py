"""Connectors: where finished documents go besides the result store (``--connectors jsonl``).

Both modes use this module: the embedded scan hands each saved batch to every configured connector;
the cluster runs each connector as the task ``stoq.connector.<name>`` chained after the store
connector. A connector that fails is reported and never stops the scan or the other connectors.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from stoq.config import ConfigError, Settings
from stoq.plugin import ConnectorPlugin
from stoq.registry import Registry, make_options
from stoq.runner import describe_exception

log = logging.getLogger(__name__)


def open_connectors(settings: Settings, registry: Registry | None = None) -> list[ConnectorPlugin]:
    """The configured connectors, set up; a ConfigError names one that is unknown or cannot start."""
    registry = registry if registry is not None else Registry.discover()
    opened: list[ConnectorPlugin] = []
    for name in settings.connectors:
        cls = registry.get(name)
        if cls.category != "connector":
            raise ConfigError(f"plugin {name!r} is a {cls.category}, not a connector")
        plugin = cls(make_options(cls, settings.plugins.get(name, {})))
        try:
            plugin.setup()
        except Exception as exc:
            raise ConfigError(f"connector {name!r} cannot start: {describe_exception(exc)}") from exc
        opened.append(plugin)  # type: ignore[arg-type]
    return opened


def deliver(connectors: list[ConnectorPlugin], documents: Iterable[dict[str, Any]]) -> list[str]:
    """Gives the documents to each connector; returns one message per connector that failed."""
    docs = list(documents)
    failures = []
    for connector in connectors:
        try:
            connector.save(docs)
        except Exception as exc:  # a sink's failure is reported, the others still get the documents
            failures.append(f"connector {connector.name!r} failed on {len(docs)} document(s): {describe_exception(exc)}")
            log.error(failures[-1])
    return failures
