"""The ``queue`` connector against the real RabbitMQ and Redis on loopback (run under the services lock)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from fake_services import free_port
from helpers import amqp_url, redis_url

from stoq_plugins.queueconn import QueueConnector

AMQP = amqp_url()
REDIS = redis_url(4)  # this module's database


def doc(i: int) -> dict[str, Any]:
    return {"scan_id": f"scan-{i}", "date": "2026-12-06T06:00:00Z", "results": [], "errors": [], "n": i}


def connector(**options: Any) -> QueueConnector:
    plugin = QueueConnector(QueueConnector.Options(**options))
    plugin.setup()
    return plugin


@pytest.mark.rabbitmq
def test_amqp_messages_are_persistent_confirmed_and_carry_the_scan_id() -> None:
    name = f"stoq-test-{uuid.uuid4().hex[:8]}"
    plugin = connector(url=AMQP, exchange=name, queue=name, routing_key="r")
    try:
        plugin.save([doc(1), doc(2)])
        plugin.save([doc(3)])
        with Connection(AMQP) as conn:
            queue = Queue(name, Exchange(name, type="fanout", durable=True), routing_key="r", durable=True)(conn.default_channel)
            got = []
            while (message := queue.get(no_ack=True)) is not None:
                got.append(message)
            assert [json.loads(m.body) for m in got] == [doc(1), doc(2), doc(3)]
            assert [(m.properties["message_id"], m.headers["scan_id"], m.properties["delivery_mode"], m.content_type)
                    for m in got] == [(f"scan-{i}", f"scan-{i}", 2, "application/json") for i in (1, 2, 3)]
            queue.delete()
            Exchange(name)(conn.default_channel).delete()
    finally:
        plugin.close()


def test_amqp_broker_away_is_an_error_and_the_next_batch_reconnects() -> None:
    plugin = connector(url=f"amqp://guest:guest@127.0.0.1:{free_port()}//", timeout=1)
    with pytest.raises((OSError, OperationalError)):  # refused, as kombu reports it
        plugin.save([doc(1)])
    assert plugin.publisher.conn is None


def test_redis_stream_entries_and_maxlen() -> None:
    client = redis.Redis.from_url(REDIS)
    client.delete("stoq:test:results")
    plugin = connector(url=REDIS, stream="stoq:test:results", maxlen=3)
    try:
        plugin.save([doc(i) for i in range(5)])
        entries = client.xrange("stoq:test:results")
        assert [(e[b"scan_id"].decode(), json.loads(e[b"document"])) for _, e in entries] == [
            (f"scan-{i}", doc(i)) for i in (2, 3, 4)]
    finally:
        client.delete("stoq:test:results")
        plugin.close()


def test_a_url_of_another_kind_cannot_start() -> None:
    with pytest.raises(ValueError, match="amqp:// or redis://"):
        connector(url="http://example.invalid/")


@pytest.mark.rabbitmq
def test_an_unreachable_broker_is_caught_up_with_the_url_given_again(run_stoq: Any) -> None:
    """The URL is a secret option: the outbox does not keep it, `stoq connectors catch-up -o queue.url=...`
    supplies it; each scan is then published once to the real RabbitMQ."""
    from helpers import CORPUS

    name = f"stoq-test-{uuid.uuid4().hex[:8]}"
    away = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    proc = run_stoq("scan", str(CORPUS / "test.txt"), str(CORPUS / "test.zip"), "--connectors", "queue",
                    "-o", f"queue.url={away}", "-o", f"queue.exchange={name}", "-o", f"queue.queue={name}",
                    "-o", "queue.timeout=1")
    assert proc.returncode == 5, proc.stderr
    ids = sorted(json.loads(line)["scan_id"] for line in proc.stdout.splitlines())
    status = [json.loads(line) for line in run_stoq("connectors", "status").stdout.splitlines()]
    assert sorted(r["scan_id"] for r in status) == ids and "Connection refused" in status[0]["last_error"]
    proc = run_stoq("connectors", "catch-up", "--now", "-o", f"queue.url={AMQP}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["delivered"] == {"queue": 2}
    with Connection(AMQP) as conn:
        queue = Queue(name, Exchange(name, type="fanout", durable=True), routing_key="stoq.result", durable=True)(conn.default_channel)
        got = []
        while (message := queue.get(no_ack=True)) is not None:
            got.append(message.headers["scan_id"])
        queue.delete()
        Exchange(name)(conn.default_channel).delete()
    assert sorted(got) == ids
