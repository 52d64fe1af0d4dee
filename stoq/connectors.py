"""Connectors: where finished documents go besides the result store (``--connectors jsonl,file``).

Both modes use this module: the embedded scan hands each saved batch to every configured connector;
the cluster runs each connector as the task ``stoq.connector.<name>`` chained after the store
connector. A connector that fails is reported and never stops the scan or the other connectors.

Delivery is at least once. The result store is the source of truth: a document a connector could
not take is recorded in the store's outbox (``stoq.outbox``) and delivered again later, by the end of
a later ``stoq scan`` with that connector, by ``stoq connectors catch-up``, or by the cluster's
workers (after the connector task's own retries with backoff). Backends that can are idempotent by
scan id, so a repeat changes nothing there; the others may receive a document twice.

TLP: each connector has the option ``max_tlp``; a document whose ``source.meta.tlp`` is above it is
withheld from that connector (counted, never an error). A document without a label counts as
``clear``; a label that is not one of TLP's counts as ``red``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from stoq.config import ConfigError, Settings
from stoq.plugin import TLP_LEVELS, ConnectorPlugin, PartialDelivery
from stoq.registry import Registry, make_options
from stoq.runner import describe_exception

log = logging.getLogger(__name__)


def tlp_of(doc: dict[str, Any]) -> str:
    """The document's TLP label (``source.meta.tlp``), normalised: ``clear`` when absent, ``white`` read as
    ``clear``, a ``TLP:`` prefix and case ignored, anything else ``red`` (fail closed)."""
    source = doc.get("source")
    meta = source.get("meta") if isinstance(source, dict) else None
    value = meta.get("tlp") if isinstance(meta, dict) else None
    if value is None:
        return "clear"
    label = str(value).strip().lower().removeprefix("tlp:")
    label = "clear" if label == "white" else label
    return label if label in TLP_LEVELS else "red"


def allowed(doc: dict[str, Any], max_tlp: str) -> bool:
    """May a connector configured with ``max_tlp`` receive ``doc``?"""
    limit = "clear" if max_tlp == "white" else max_tlp
    return TLP_LEVELS.index(tlp_of(doc)) <= TLP_LEVELS.index(limit)


def stored_options(connector: ConnectorPlugin) -> str:
    """The connector's options as JSON for the outbox, without the secret ones (passwords, keys):
    those come from the configuration of whoever delivers later."""
    fields = type(connector.options).model_fields
    values = connector.options.model_dump(mode="json")
    return orjson.dumps({k: v for k, v in values.items()
                         if not (fields[k].json_schema_extra or {}).get("secret")}).decode()  # type: ignore[union-attr]


@dataclass
class Delivery:
    """What became of a batch at one connector (scan ids)."""

    connector: ConnectorPlugin
    sent: list[str] = field(default_factory=list)
    withheld: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    error: str | None = None

    def message(self) -> str | None:
        if self.error is None:
            return None
        of = f" of {len(self.failed) + len(self.sent)}" if self.sent else ""
        return f"connector {self.connector.name!r} failed on {len(self.failed)}{of} document(s): {self.error}"


def open_connectors(settings: Settings, registry: Registry | None = None) -> list[ConnectorPlugin]:
    """The configured connectors, set up; a ConfigError names one that is unknown or cannot start."""
    registry = registry if registry is not None else Registry.discover()
    return [open_connector(registry, name, settings.plugins.get(name, {})) for name in settings.connectors]


def open_connector(registry: Registry, name: str, options: dict[str, Any]) -> ConnectorPlugin:
    cls = registry.get(name)
    if cls.category != "connector":
        raise ConfigError(f"plugin {name!r} is a {cls.category}, not a connector")
    plugin = cls(make_options(cls, options))
    try:
        plugin.setup()
    except Exception as exc:
        raise ConfigError(f"connector {name!r} cannot start: {describe_exception(exc)}") from exc
    return plugin  # type: ignore[return-value]


def deliver_each(connectors: list[ConnectorPlugin], documents: Iterable[dict[str, Any]]) -> list[Delivery]:
    """Gives the documents each connector may receive (TLP) to it; one ``Delivery`` per connector."""
    docs = list(documents)
    outcomes = []
    for connector in connectors:
        out = Delivery(connector)
        max_tlp = getattr(connector.options, "max_tlp", "red")
        chosen = [doc for doc in docs if allowed(doc, max_tlp)]
        out.withheld = [doc["scan_id"] for doc in docs if not allowed(doc, max_tlp)]
        if out.withheld:
            log.info("connector %r: %d document(s) above max_tlp=%s withheld", connector.name, len(out.withheld), max_tlp)
        ids = [d["scan_id"] for d in chosen]
        try:
            if chosen:
                connector.save(chosen)
            out.sent = ids
        except PartialDelivery as exc:
            failed = set(exc.failed)
            out.failed = [i for i in ids if i in failed]
            out.sent = [i for i in ids if i not in failed]
            out.error = describe_exception(exc)
        except Exception as exc:  # a sink's failure is reported, the others still get the documents
            out.failed, out.error = ids, describe_exception(exc)
        if out.error is not None:
            log.error(out.message())
        outcomes.append(out)
    return outcomes


def deliver(connectors: list[ConnectorPlugin], documents: Iterable[dict[str, Any]]) -> list[str]:
    """Gives the documents to each connector; returns one message per connector that failed."""
    return [m for m in (d.message() for d in deliver_each(connectors, documents)) if m is not None]
