"""The ``fluentd`` connector: finished documents as Fluentd events over the forward protocol."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin, Extra, PartialDelivery


class FluentdConnector(ConnectorPlugin):
    """Sends every finished document as one event, tag ``<tag>.scan``, time the scan's date, record the
    document, with fluent-logger (msgpack over TCP, Fluentd's ``in_forward``).

    fluent-logger keeps what it could not send and sends it with the next event; here a failed send is
    an error instead and that buffer is dropped (the framework retries from the store), so an event is
    never sent both by the library and by a retry. fluent-logger does not ask Fluentd for
    acknowledgements: an event is delivered once written to the connection.
    """

    name = "fluentd"
    version = "1.0"
    extras = (Extra("fluent", "pip install 'stoq-analysis[fluentd]'", "cannot start"),)

    class Options(ConnectorOptions):
        """Where Fluentd listens."""

        host: str = Field("localhost", description="Fluentd's in_forward host.")
        port: int = Field(24224, ge=1, le=65535, description="Fluentd's in_forward port.")
        tag: str = Field("stoq", pattern=r"^[A-Za-z0-9_.-]+$", description="Tag prefix: events are tagged <tag>.scan.")
        timeout: float = Field(3.0, gt=0, description="Seconds to connect and send.")

    def setup(self) -> None:
        from fluent.sender import FluentSender

        o = self.options
        self.sender = FluentSender(o.tag, host=o.host, port=o.port, timeout=o.timeout)

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        docs = list(documents)
        for at, doc in enumerate(docs):
            when = int(datetime.fromisoformat(doc["date"].replace("Z", "+00:00")).timestamp())
            if not self.sender.emit_with_time("scan", when, doc):
                error = self.sender.last_error
                self.sender.clear_last_error()
                self.sender.pendings = None  # not resent by the library: the framework retries these
                raise PartialDelivery(f"cannot send to Fluentd at {self.options.host}:{self.options.port}: "
                                      f"{type(error).__name__}: {error}", [d["scan_id"] for d in docs[at:]])

    def close(self) -> None:
        self.sender.close()
