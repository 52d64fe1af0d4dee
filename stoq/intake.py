"""``stoq intake``: submissions that other systems publish on a RabbitMQ queue (kombu) or a Redis stream
(docs/sources/intake.md; the message: docs/intake-message.schema.json, from ``Message`` below).

A message names one file: a ``path`` (only under the directories the operator allows,
``--paths-under``), an ``archive`` reference (a sha256 in stoq's own archive) or inline ``content_b64``
(at most ``max_inline`` bytes decoded), with optional ``filename``, ``workers``, ``options`` and
``meta``. Messages are taken in batches; each good one is scanned embedded (the document stored) or
published to the cluster, then acknowledged. A bad one (not JSON, not the schema, a file missing or
outside the allowed directories, too big, settings the engine refuses) is published to the
dead-letter queue or stream with the reason, then acknowledged: nothing is dropped silently.

The scan id of a message is derived from its identity (a Redis entry's id; an AMQP message's
``message_id``, else the message's ``id`` field, else a new one), so a message delivered again after a
crash is stored once (the store keeps one document per scan id).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stoq.archive import ArchiveError, open_archive
from stoq.config import ConfigError, Settings
from stoq.model import new_id
from stoq.submission import MAX_ENTRIES, MetaError, Root, check_meta

log = logging.getLogger(__name__)

#: scan ids of messages: uuid5 of the message's identity in this namespace.
NAMESPACE = uuid.UUID("5d3b6a43-0c8f-4b4f-9a43-7f2c1b0e2a11")
MAX_INLINE = 1 << 20  # default cap of inline content, decoded
HARD_INLINE = 16 << 20  # the most --max-inline accepts
DLQ_BODY = 64 << 10  # bytes of a bad message's body kept in its dead letter


class ArchiveRef(BaseModel):
    """A payload already in stoq's archive, by sha256."""

    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The payload's sha256 (lower-case hex).")


class Message(BaseModel):
    """A submission message (one file). Exactly one of ``path``, ``archive``, ``content_b64``."""

    model_config = ConfigDict(extra="forbid", title="stoq intake message")
    id: str | None = Field(None, max_length=128, description="The publisher's id of the message (its scan id is derived from it when the transport gives none).")
    path: str | None = Field(None, min_length=1, max_length=4096, description="An absolute path, readable where intake runs, under one of its --paths-under directories.")
    archive: ArchiveRef | None = Field(None, description="A payload in stoq's archive.")
    content_b64: str | None = Field(None, description="The file itself, base64 (at most --max-inline bytes decoded).")
    filename: str | None = Field(None, max_length=255, description="The file's name in the document (archive and inline content; default: the sha256 or 'inline').")
    workers: list[str] | None = Field(None, max_length=64, description="Plugins to run on every payload (default: intake's --workers).")
    options: dict[str, dict[str, Any]] | None = Field(None, description="Plugin options, {plugin: {option: value}}, over intake's own.")
    meta: dict[str, str] | None = Field(None, max_length=MAX_ENTRIES, description="Submission metadata (source.meta): string values; tlp one of clear, white, green, amber, amber+strict, red.")


def message_schema() -> dict[str, Any]:
    """The JSON Schema of a message (docs/intake-message.schema.json holds it; a test keeps them equal)."""
    schema = Message.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["oneOf"] = [{"required": [k]} for k in ("path", "archive", "content_b64")]
    return schema


class Rejected(Exception):
    """A message that goes to the dead-letter place, with the reason."""


@dataclass
class Delivery:
    """One message as a transport hands it over: its body, its identity, how to acknowledge it."""

    body: bytes
    identity: str | None
    tag: Any


@dataclass
class Accepted:
    delivery: Delivery
    root: Root
    settings: Settings
    spooled: Path | None  # a file intake wrote (inline or archive content), removed once settled


class Intake:
    """Turns deliveries into roots (or dead letters) and submits them. ``submit(settings, roots)``
    returns ``(ok scan ids, {scan id: why})``, embedded or cluster alike."""

    def __init__(self, base: Settings, paths_under: list[Path], max_inline: int, meta: dict[str, str],
                 submit: Callable[[Settings, list[Root]], tuple[list[str], dict[str, str]]], spool: Path) -> None:
        self.base = base
        self.paths_under = [p.resolve() for p in paths_under]
        self.max_inline = max_inline
        self.meta = meta
        self.submit = submit
        self.spool = spool
        self._archive: Any = None
        self.counts = {"accepted": 0, "dead-lettered": 0}

    def parse(self, delivery: Delivery) -> Accepted:
        """The message's root and settings, or ``Rejected`` with the reason."""
        if len(delivery.body) > self.max_inline * 4 // 3 + (64 << 10):
            raise Rejected(f"message too big: {len(delivery.body)} bytes")
        try:
            raw = orjson.loads(delivery.body)
        except orjson.JSONDecodeError as exc:
            raise Rejected(f"not JSON: {exc}") from None
        try:
            msg = Message.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise Rejected(f"not a submission message: {'.'.join(map(str, first['loc'])) or '(message)'}: "
                           f"{first['msg']}") from None
        given = [k for k in ("path", "archive", "content_b64") if getattr(msg, k) is not None]
        if len(given) != 1:
            raise Rejected("not a submission message: exactly one of path, archive, content_b64 is needed "
                           f"({', '.join(given) or 'none'} given)")
        try:
            meta = check_meta({**self.meta, **(msg.meta or {})})
        except MetaError as exc:
            raise Rejected(str(exc)) from None
        settings = self._settings(msg)
        identity = f"id:{msg.id}" if msg.id else delivery.identity  # a publisher's retry: the same scan
        scan_id = str(uuid.uuid5(NAMESPACE, identity)) if identity else new_id()
        if msg.path is not None:
            path = Path(msg.path)
            if not path.is_absolute():
                raise Rejected(f"path {msg.path!r} is not absolute")
            real = path.resolve()
            if not any(real == d or d in real.parents for d in self.paths_under):
                raise Rejected(f"path {msg.path!r} is outside the directories intake may read (--paths-under)")
            if not real.is_file():
                raise Rejected(f"path {msg.path!r}: no such regular file")
            return Accepted(delivery, Root(real, scan_id, meta, shown=msg.path), settings, None)
        if msg.content_b64 is not None:
            if len(msg.content_b64) > (self.max_inline + 2) // 3 * 4 + 4:
                raise Rejected(f"inline content too big: more than {self.max_inline} bytes (--max-inline)")
            try:
                content = base64.b64decode(msg.content_b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Rejected(f"content_b64 is not base64: {exc}") from None
            if len(content) > self.max_inline:
                raise Rejected(f"inline content too big: {len(content)} bytes, at most {self.max_inline} (--max-inline)")
            name = msg.filename or "inline"
        else:
            assert msg.archive is not None
            try:
                content = self._archive_of().get(msg.archive.sha256)
            except (KeyError, FileNotFoundError, ArchiveError, OSError) as exc:
                raise Rejected(f"archive: no payload {msg.archive.sha256} ({type(exc).__name__})") from None
            name = msg.filename or msg.archive.sha256
        spooled = self._spool(content)
        return Accepted(delivery, Root(spooled, scan_id, meta, shown=os.path.basename(name) or "inline"), settings,
                        spooled)

    def _settings(self, msg: Message) -> Settings:
        if msg.workers is None and not msg.options:
            return self.base
        plugins = {k: dict(v) for k, v in self.base.plugins.items()}
        for plugin, values in (msg.options or {}).items():
            plugins.setdefault(plugin, {}).update(values)
        try:
            return Settings.model_validate(self.base.model_dump() | {
                "workers": msg.workers if msg.workers is not None else self.base.workers, "plugins": plugins})
        except ValidationError as exc:
            raise Rejected(f"settings: {exc.errors(include_url=False)[0]['msg']}") from None

    def _archive_of(self) -> Any:
        if self._archive is None:
            self._archive = open_archive(self.base.archiver, self.base.resolved_archive())
        return self._archive

    def _spool(self, content: bytes) -> Path:
        handle, name = tempfile.mkstemp(dir=self.spool, prefix="msg-")
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        return Path(name)

    def handle(self, deliveries: list[Delivery]) -> tuple[list[Delivery], list[tuple[Delivery, str]]]:
        """Submits a batch; returns (deliveries settled, dead letters (delivery, reason)). Every
        delivery given is in one of the two."""
        accepted: list[Accepted] = []
        dead: list[tuple[Delivery, str]] = []
        for delivery in deliveries:
            try:
                accepted.append(self.parse(delivery))
            except Rejected as exc:
                dead.append((delivery, str(exc)))
        groups: dict[str, list[Accepted]] = {}
        for item in accepted:
            groups.setdefault(item.settings.model_dump_json(), []).append(item)
        settled: list[Delivery] = []
        for items in groups.values():
            by_id: dict[str | None, list[Accepted]] = {}
            for a in items:  # the same message twice in a batch (a publisher's retry): one scan
                by_id.setdefault(a.root.scan_id, []).append(a)
            try:
                ok, failed = self.submit(items[0].settings, [same[0].root for same in by_id.values()])
            except ConfigError as exc:
                ok, failed = [], {scan_id or "": f"settings: {exc}" for scan_id in by_id}
            for scan_id in ok:
                settled.extend(a.delivery for a in by_id[scan_id])
            for scan_id, why in failed.items():
                dead.extend((a.delivery, why) for a in by_id[scan_id])
            for a in items:
                if a.spooled is not None:
                    a.spooled.unlink(missing_ok=True)
        self.counts["accepted"] += len(settled)
        self.counts["dead-lettered"] += len(dead)
        return settled, dead

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()
        shutil.rmtree(self.spool, ignore_errors=True)


def dead_letter(delivery: Delivery, reason: str, origin: str) -> dict[str, Any]:
    """The dead letter of a message: the reason, where it came from, when, and its body (text when
    it is UTF-8, else base64; cut at ``DLQ_BODY`` bytes, saying so)."""
    body = delivery.body[:DLQ_BODY]
    try:
        shown: dict[str, Any] = {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        shown = {"body_b64": base64.b64encode(body).decode()}
    return {"reason": reason, "from": origin, "identity": delivery.identity,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "truncated": len(delivery.body) > DLQ_BODY} | shown


# ----------------------------------------------------------------------------------------- transports

class RedisStream:
    """A Redis stream read through a consumer group; dead letters go to another stream."""

    def __init__(self, url: str, stream: str, dlq: str, group: str, consumer: str) -> None:
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=30)
        self.stream, self.dlq, self.group, self.consumer = stream, dlq, group, consumer
        self.origin = f"redis stream {stream}"
        try:
            self.r.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._backlog = True  # first, what this consumer took and never acknowledged (a crash)

    def take(self, count: int, wait: float) -> list[Delivery]:
        start = "0" if self._backlog else ">"
        got = self.r.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count,
                                block=None if self._backlog else int(wait * 1000))
        entries = got[0][1] if got else []
        if self._backlog and not entries:
            self._backlog = False
            return self.take(count, wait)
        out = []
        for entry_id, fields in entries:
            body = fields.get(b"message", b"") if fields else b""
            ident = entry_id.decode()
            out.append(Delivery(body, f"redis:{self.stream}:{ident}", entry_id))
        return out

    def settle(self, done: list[Delivery], dead: list[tuple[Delivery, str]]) -> None:
        with self.r.pipeline() as pipe:
            for delivery, reason in dead:
                pipe.xadd(self.dlq, {"dead_letter": orjson.dumps(dead_letter(delivery, reason, self.origin))})
            tags = [d.tag for d in done] + [d.tag for d, _ in dead]
            if tags:
                pipe.xack(self.stream, self.group, *tags)
            pipe.execute()

    def close(self) -> None:
        self.r.close()


class AmqpQueue:
    """A RabbitMQ queue (kombu, manual acknowledgement); dead letters go to another queue."""

    def __init__(self, url: str, queue: str, dlq: str, prefetch: int) -> None:
        from kombu import Connection, Queue

        self.conn = Connection(url)
        self.conn.ensure_connection(max_retries=3)
        self.channel = self.conn.channel()
        self.queue = Queue(queue, routing_key=queue, durable=True, channel=self.channel)
        self.queue.declare()
        self.dlq = Queue(dlq, routing_key=dlq, durable=True, channel=self.channel)
        self.dlq.declare()
        self.producer = self.conn.Producer(channel=self.channel)
        self.origin = f"amqp queue {queue}"
        self.channel.basic_qos(0, prefetch, False)

    def take(self, count: int, wait: float) -> list[Delivery]:
        out: list[Delivery] = []
        deadline = time.monotonic() + wait
        while len(out) < count:
            message = self.queue.get(no_ack=False)
            if message is None:
                if out or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
                continue
            ident = message.properties.get("message_id")
            out.append(Delivery(message.body if isinstance(message.body, bytes) else bytes(message.body),
                                f"amqp:{self.queue.name}:{ident}" if ident else None, message))
        return out

    def settle(self, done: list[Delivery], dead: list[tuple[Delivery, str]]) -> None:
        for delivery, reason in dead:
            self.producer.publish(orjson.dumps(dead_letter(delivery, reason, self.origin)), exchange="",
                                  routing_key=self.dlq.name, content_type="application/json",
                                  content_encoding="binary", delivery_mode=2)
        for delivery in [*done, *(d for d, _ in dead)]:
            delivery.tag.ack()

    def close(self) -> None:
        self.conn.release()


def open_transport(url: str, name: str, dlq: str, batch: int, consumer: str) -> Any:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStream(url, name, dlq, "stoq-intake", consumer)
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return AmqpQueue(url, name, dlq, batch)
    raise ConfigError(f"--from {url!r}: an amqp:// (RabbitMQ queue) or redis:// (Redis stream) URL")


def run(transport: Any, intake: Intake, batch: int, stop: Any, drain: bool,
        report: Callable[[str], None], report_every: float = 10.0) -> None:
    """Takes batches until ``stop`` is set (or, with ``drain``, until nothing is waiting)."""
    last = time.monotonic()
    while not stop.is_set():
        deliveries = transport.take(batch, 1.0)
        if deliveries:
            done, dead = intake.handle(deliveries)
            for delivery, reason in dead:
                report(f"intake: dead-lettered {delivery.identity or 'a message'}: {reason}")
            transport.settle(done, dead)
        elif drain:
            break
        if time.monotonic() - last >= report_every:
            report(f"intake: {intake.counts['accepted']} accepted, {intake.counts['dead-lettered']} dead-lettered")
            last = time.monotonic()
    report(f"intake: {intake.counts['accepted']} accepted, {intake.counts['dead-lettered']} dead-lettered (stopping)")
