"""``stoq intake`` against a real Redis stream (database 2) and a real RabbitMQ queue (vhost ``/``, queues
named for the test and deleted after): good messages of every kind are stored once, each bad one is
dead-lettered once with its reason (run under the services lock)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis

from helpers import ROOT, amqp_url, redis_url

REDIS = redis_url(2)
AMQP = amqp_url()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_documented_schema_is_the_models() -> None:
    from stoq.intake import message_schema

    assert json.loads((ROOT / "docs" / "intake-message.schema.json").read_text()) == message_schema()


class RedisBus:
    url = REDIS

    def __init__(self, name: str) -> None:
        self.name = name
        self.r = redis.Redis.from_url(REDIS)
        self.r.delete(name, f"{name}.dlq")

    def publish(self, body: bytes) -> None:
        self.r.xadd(self.name, {"message": body})

    def dead(self) -> list[dict[str, Any]]:
        return [json.loads(f[b"dead_letter"]) for _, f in self.r.xrange(f"{self.name}.dlq")]

    def waiting(self) -> int:
        return sum(g["pending"] for g in self.r.xinfo_groups(self.name))

    def close(self) -> None:
        self.r.delete(self.name, f"{self.name}.dlq")


class AmqpBus:
    url = AMQP

    def __init__(self, name: str) -> None:
        from kombu import Connection, Queue

        self.name = name
        self.conn = Connection(AMQP)
        self.channel = self.conn.channel()
        self.queues = [Queue(n, routing_key=n, durable=True, channel=self.channel) for n in (name, f"{name}.dlq")]
        for q in self.queues:
            q.declare()
        self.producer = self.conn.Producer(channel=self.channel)

    def publish(self, body: bytes) -> None:
        self.producer.publish(body, exchange="", routing_key=self.name, content_type="application/json",
                              content_encoding="binary")

    def dead(self) -> list[dict[str, Any]]:
        out = []
        while (m := self.queues[1].get(no_ack=True)) is not None:
            out.append(json.loads(m.body))
        return out

    def waiting(self) -> int:
        return int(self.queues[0].queue_declare(passive=True).message_count)

    def close(self) -> None:
        for q in self.queues:
            q.delete()
        self.conn.release()


@pytest.fixture(params=["redis", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def bus(request: pytest.FixtureRequest) -> Iterator[Any]:
    name = f"stoq-test-intake-{uuid.uuid4().hex[:8]}"
    b = RedisBus(name) if request.param == "redis" else AmqpBus(name)
    yield b
    b.close()


def stored(db: Path) -> dict[str, list[dict[str, Any]]]:
    conn = sqlite3.connect(db)
    try:
        out: dict[str, list[dict[str, Any]]] = {}
        for root, source in conn.execute("SELECT root_sha256, source FROM scans"):
            out.setdefault(root, []).append(json.loads(source))
        return out
    finally:
        conn.close()


def test_good_messages_are_stored_and_bad_ones_dead_lettered(bus: Any, run_stoq: Callable[..., Any],
                                                             tmp_path: Path) -> None:
    allowed = tmp_path / "drop"
    allowed.mkdir()
    (allowed / "by-path.txt").write_bytes(b"named by path\n")
    (tmp_path / "secret.txt").write_bytes(b"outside\n")
    archived = tmp_path / "archived.bin"
    archived.write_bytes(b"already in the archive\n")
    first = run_stoq("scan", str(archived))  # archives it: the archive message names its sha256
    assert first.returncode == 0, first.stderr
    good = [
        {"content_b64": base64.b64encode(b"inline one\n").decode(), "filename": "one.txt", "meta": {"tlp": "AMBER"}},
        {"content_b64": base64.b64encode(b"inline two\n").decode(), "id": "publisher-7"},
        {"path": str(allowed / "by-path.txt"), "workers": ["basicworker"]},
        {"archive": {"sha256": sha(b"already in the archive\n")}, "filename": "again.bin"},
    ]
    bad = {
        b"{not json": "not JSON",
        json.dumps({"path": str(allowed / "by-path.txt"), "colour": "red"}).encode(): "colour: Extra inputs",
        json.dumps({"path": str(allowed / "gone.txt")}).encode(): "no such regular file",
        json.dumps({"path": str(tmp_path / "secret.txt")}).encode(): "outside the directories",
        json.dumps({"content_b64": base64.b64encode(b"x" * 200).decode()}).encode(): "too big",
        json.dumps({"content_b64": "aGk=", "path": "/x"}).encode(): "exactly one of",
        json.dumps({"content_b64": "aGk=", "meta": {"tlp": "purple"}}).encode(): "meta tlp='purple'",
        json.dumps({"content_b64": "aGk=", "workers": ["nosuchplugin"]}).encode(): "nosuchplugin",
    }
    for i, body in enumerate([json.dumps(m).encode() for m in good] + list(bad)):
        bus.publish(body)
    got = run_stoq("intake", "--from", bus.url, "--queue", bus.name, "--drain", "--paths-under", str(allowed),
                   "--max-inline", "100", "--meta", "source=test", "--batch", "5")
    assert got.returncode == 0, got.stderr
    docs = stored(tmp_path / "stoq.db")
    archived_sha = sha(b"already in the archive\n")
    assert {k: len(v) for k, v in docs.items()} == {
        sha(b"inline one\n"): 1, sha(b"inline two\n"): 1, sha(b"named by path\n"): 1, archived_sha: 2}
    assert docs[sha(b"inline one\n")] == [{"path": "one.txt", "meta": {"source": "test", "tlp": "amber"}}]
    assert docs[sha(b"named by path\n")] == [{"path": str(allowed / "by-path.txt"), "meta": {"source": "test"}}]
    assert {"path": "again.bin", "meta": {"source": "test"}} in docs[archived_sha]
    letters = bus.dead()
    assert len(letters) == len(bad)
    for letter in letters:
        expected = bad[letter["body"].encode()]
        assert expected in letter["reason"], (expected, letter)
    assert bus.waiting() == 0
    assert b"intake: 4 accepted, 8 dead-lettered (stopping)" in got.stderr


def test_a_message_delivered_again_is_stored_once(run_stoq: Callable[..., Any], tmp_path: Path) -> None:
    """A Redis entry taken and never acknowledged (a crash) is taken again at the next start, and a
    message published again under the same ``id``: each is stored under one scan id, once."""
    bus = RedisBus(f"stoq-test-intake-{uuid.uuid4().hex[:8]}")
    try:
        bus.publish(json.dumps({"content_b64": base64.b64encode(b"twice\n").decode()}).encode())
        bus.r.xgroup_create(bus.name, "stoq-intake", id="0", mkstream=True)
        bus.r.xreadgroup("stoq-intake", "box", {bus.name: ">"}, count=10)  # taken, never acknowledged
        retried = json.dumps({"content_b64": base64.b64encode(b"other\n").decode(), "id": "same-id"}).encode()
        bus.publish(retried)  # a publisher's retry: the same message id twice, in one batch
        bus.publish(retried)
        got = run_stoq("intake", "--from", REDIS, "--queue", bus.name, "--drain", "--consumer", "box")
        assert got.returncode == 0, got.stderr
        assert b"intake: 3 accepted, 0 dead-lettered (stopping)" in got.stderr
        bus.publish(retried)  # and again later, in another run
        got = run_stoq("intake", "--from", REDIS, "--queue", bus.name, "--drain", "--consumer", "box")
        assert got.returncode == 0, got.stderr
        assert {k: len(v) for k, v in stored(tmp_path / "stoq.db").items()} == {sha(b"twice\n"): 1, sha(b"other\n"): 1}
        assert bus.waiting() == 0
    finally:
        bus.close()
