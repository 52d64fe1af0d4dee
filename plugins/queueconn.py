"""The ``queue`` connector: finished documents published to a RabbitMQ exchange or a Redis stream."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin
from stoq_plugins._publish import AmqpPublisher, RedisStreamPublisher


class QueueConnector(ConnectorPlugin):
    """Publishes every finished document, as its JSON, for downstream consumers.

    ``amqp://`` URL: a persistent message per document to a durable exchange (publisher confirms:
    ``save`` returns once RabbitMQ has taken each), ``message_id`` and the header ``scan_id`` set to
    the scan id (a consumer dedups a redelivery with it); ``queue``, when set, is declared durable and
    bound so that nothing is dropped while no consumer runs. ``redis://`` URL: ``XADD`` to a stream,
    fields ``scan_id`` and ``document``, trimmed to the newest ``maxlen`` entries.
    """

    name = "queue"
    version = "1.0"

    class Options(ConnectorOptions):
        """Where the documents are published."""

        url: str | None = Field(None, description="amqp://user:password@host:5672/vhost or redis://host:6379/0 (required).", json_schema_extra={"secret": True})
        exchange: str = Field("stoq.results", description="AMQP: the exchange (durable).")
        exchange_type: str = Field("fanout", description="AMQP: fanout, direct or topic.")
        routing_key: str = Field("stoq.result", description="AMQP: the routing key of every message.")
        queue: str | None = Field("stoq.results", description="AMQP: a durable queue declared and bound to the exchange (empty: none).")
        stream: str = Field("stoq:results", description="Redis: the stream key.")
        maxlen: int = Field(100_000, ge=1, description="Redis: the stream keeps the newest this many entries (MAXLEN).")
        timeout: float = Field(10.0, gt=0, description="Seconds to connect and to wait for each confirmation.")

    def setup(self) -> None:
        url = self.options.url
        if not url:
            raise ValueError("queue.url is not set (-o queue.url=amqp://guest:guest@localhost:5672//)")
        o = self.options
        if url.startswith(("redis://", "rediss://", "unix://")):
            self.publisher: Any = RedisStreamPublisher(url, o.stream, o.maxlen, o.timeout)
        elif url.startswith(("amqp://", "amqps://", "pyamqp://")):
            self.publisher = AmqpPublisher(url, o.exchange, o.exchange_type, o.routing_key, o.queue or None, o.timeout)
        else:
            raise ValueError("queue.url must be an amqp:// or redis:// URL")

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        self.publisher.publish(list(documents))

    def close(self) -> None:
        self.publisher.close()
