"""Publishing documents for the ``queue`` connector: AMQP through kombu, Redis streams through redis-py."""

from __future__ import annotations

from typing import Any

import orjson


class AmqpPublisher:
    """A kombu producer on a durable exchange, with publisher confirms; reconnects on the next batch."""

    def __init__(self, url: str, exchange: str, exchange_type: str, routing_key: str, queue: str | None,
                 timeout: float) -> None:
        from kombu import Exchange, Queue

        self.url, self.timeout, self.routing_key = url, timeout, routing_key
        self.exchange = Exchange(exchange, type=exchange_type, durable=True)
        self.queue = Queue(queue, self.exchange, routing_key=routing_key, durable=True) if queue else None
        self.conn: Any = None

    def _producer(self) -> Any:
        from kombu import Connection

        if self.conn is None:
            self.conn = Connection(self.url, connect_timeout=self.timeout, transport_options={"confirm_publish": True})
            self.conn.connect()
            channel = self.conn.default_channel
            self.exchange(channel).declare()
            if self.queue is not None:
                self.queue(channel).declare()
        return self.conn.Producer(exchange=self.exchange, routing_key=self.routing_key, serializer=None)

    def publish(self, docs: list[dict[str, Any]]) -> None:
        try:
            producer = self._producer()
            for doc in docs:  # confirm_publish: each publish returns once the broker has the message
                producer.publish(orjson.dumps(doc), content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2, message_id=doc["scan_id"], headers={"scan_id": doc["scan_id"]},
                                 retry=False, timeout=self.timeout)
        except Exception:
            self.close()  # a broken connection: a fresh one for the next batch
            raise

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.release()
            except Exception:  # closing a dead connection may fail too; it is discarded either way
                pass
            self.conn = None


class RedisStreamPublisher:
    """``XADD stream MAXLEN n * scan_id ID document JSON`` per document, one pipeline per batch."""

    def __init__(self, url: str, stream: str, maxlen: int, timeout: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.stream, self.maxlen = stream, maxlen

    def publish(self, docs: list[dict[str, Any]]) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            for doc in docs:
                pipe.xadd(self.stream, {"scan_id": doc["scan_id"], "document": orjson.dumps(doc)},
                          maxlen=self.maxlen, approximate=False)
            pipe.execute()

    def close(self) -> None:
        self.client.close()
