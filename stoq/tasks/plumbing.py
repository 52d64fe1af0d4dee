"""Redis plumbing of the cluster: the client, the key prefix and lifetimes, values too large for a
broker message (blobs), the short task labels Flower shows, and the submission profiles.

Broker messages stay small: a plugin task's message names its wave and its part, never the references
themselves (``stoq.tasks.join``), and its answers go to the wave's hash, not to Celery's result
backend. The one argument that may grow, a submission's roots, goes to a blob when its JSON is over
``INLINE_LIMIT`` and the message carries ``{"$blob": key}`` instead (``wrap``/``unwrap``). The headers
are bounded too: a task's ``argsrepr`` (what Flower shows) holds at most three labels, each cut
(``describe_ids``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
import redis
from celery import Celery

from stoq.model import new_id

PREFIX = "stoq:"
#: Every broker message (task or result), body and headers, stays under this many bytes.
MESSAGE_LIMIT = 64 * 1024
#: What one inline value may take; larger values go to a blob. Leaves room for Celery's envelope.
INLINE_LIMIT = 40 * 1024
#: Lifetime of a scan's state and of a profile: nothing outlives a forgotten scan.
TTL = 7 * 24 * 3600
#: Lifetime of what one batch needs (blobs, waves, a client's lists, a redelivery's attempts).
BLOB_TTL = 24 * 3600

_CLIENTS: dict[tuple[int, str], redis.Redis] = {}


def connect(url: str) -> redis.Redis:
    """A Redis client for ``url``, one per process (clients are not shared across a fork)."""
    key = (os.getpid(), url)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = redis.Redis.from_url(url)
    return client


def redis_client(app: Celery) -> redis.Redis:
    """This process's client of the app's result backend, where the cluster keeps its state."""
    return connect(str(app.conf.result_backend))


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


_KEEP_2, _KEEP_3, _KEEP_4 = (bytes(b for b in range(256) if not lo <= b <= hi)
                             for lo, hi in ((0xC0, 0xDF), (0xE0, 0xEF), (0xF0, 0xF7)))


def wire_json_size(data: bytes) -> int:
    """An upper bound of the size of orjson's ``data`` as Celery's JSON writes it into a message:
    a space after each ``,`` and ``:``, and every non-ASCII character escaped (``\\uXXXX``, twice for
    a character beyond U+FFFF), which makes a UTF-8 file name up to three times longer."""
    size = len(data) + data.count(b",") + data.count(b":")
    if not data.isascii():  # lead bytes of 2-, 3- and 4-byte UTF-8 sequences: 6, 6 and 12 bytes escaped
        size += 4 * len(data.translate(None, _KEEP_2)) + 3 * len(data.translate(None, _KEEP_3)) \
            + 8 * len(data.translate(None, _KEEP_4))
    return size


def wrap(r: redis.Redis, value: Any) -> Any:
    """``value`` itself if it fits in ``INLINE_LIMIT`` bytes as the message carries it
    (``wire_json_size``), else a reference to a blob holding it."""
    data = dumps(value)
    if wire_json_size(data) <= INLINE_LIMIT:
        return value
    key = f"{PREFIX}blob:{new_id()}"
    r.set(key, data, ex=BLOB_TTL)
    return {"$blob": key}


def unwrap(r: redis.Redis, value: Any) -> Any:
    """The inverse of ``wrap``. The blob is kept (a redelivered task reads it again) until the task
    that consumes it for good calls ``forget``; otherwise it expires after ``BLOB_TTL``."""
    if isinstance(value, dict) and "$blob" in value:
        data = r.get(value["$blob"])
        if data is None:
            raise LookupError(f"message blob {value['$blob']} is gone: its batch was already settled, or it "
                              "expired")
        return orjson.loads(data)
    return value


def blob_keys(*values: Any) -> list[str]:
    """The blob keys of those ``values`` that are ``wrap`` references."""
    return [v["$blob"] for v in values if isinstance(v, dict) and "$blob" in v]


def forget(r: redis.Redis, keys: list[str]) -> None:
    """Deletes blobs nothing will read again (a busy cluster would otherwise keep a day of them)."""
    if keys:
        r.delete(*keys)


def tell(r: redis.Redis, key: str, entries: list[bytes]) -> None:
    """Appends entries to a client's list (documents, verdicts), which expires if nobody reads it."""
    with r.pipeline(transaction=False) as pipe:
        pipe.rpush(key, *entries)
        pipe.expire(key, BLOB_TTL)
        pipe.execute()


# -- task labels ---------------------------------------------------------------------------------------

#: Most characters of one label (a scan or payload id and its file name) in a task's ``argsrepr``.
LABEL_LIMIT = 80
#: Most characters of a task's whole ``argsrepr``. Celery sends it twice (headers and properties), and
#: file names come from the input (a zip member's may be 65,535 bytes): bounded, the headers stay small.
REPR_LIMIT = 256


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def describe_ids(what: str, ids: list[str]) -> str:
    """A task's arguments as Flower and the logs show them: short, readable, computed cheaply
    (Celery's own repr of a batch of references costs more than a plugin run on a small file). At
    most three labels, each cut to ``LABEL_LIMIT`` characters; the whole to ``REPR_LIMIT``."""
    shown = ", ".join(cut(i, LABEL_LIMIT) for i in ids[:3]) + (", ..." if len(ids) > 3 else "")
    return cut(f"({len(ids)} {what}: {shown}", REPR_LIMIT - 1) + ")"


def describe_batch(profile: str, what: str, labels: list[str]) -> str:
    """``describe_ids`` of a batch sent with a submission's profile (bounded the same way)."""
    return cut(f"(profile {profile}, " + describe_ids(what, labels)[1:-1], REPR_LIMIT - 1) + ")"


# -- profiles: the scan settings a submission brings -------------------------------------------------

PROFILE_FIELDS = ("workers", "connectors", "plugins", "dispatch_rules", "max_depth", "max_children", "max_bytes",
                  "max_scan_seconds", "max_file_bytes", "timeout")


def profile_of(settings: Any) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in PROFILE_FIELDS}


def put_profile(r: redis.Redis, profile: dict[str, Any]) -> str:
    """Stores a profile under the hash of its JSON; returns its id."""
    data = orjson.dumps(profile, option=orjson.OPT_SORT_KEYS)
    profile_id = hashlib.sha256(data).hexdigest()[:24]
    r.set(f"{PREFIX}profile:{profile_id}", data, ex=TTL)
    return profile_id


_PROFILES: dict[str, dict[str, Any]] = {}


def get_profile(r: redis.Redis, profile_id: str) -> dict[str, Any]:
    """A stored profile; kept per process once read (its id is the hash of its content, so it never
    changes): the store connector asks for it on every batch."""
    profile = _PROFILES.get(profile_id)
    if profile is None:
        data = r.get(f"{PREFIX}profile:{profile_id}")
        if data is None:
            raise LookupError(f"scan profile {profile_id} has expired or was never written")
        profile = _PROFILES[profile_id] = orjson.loads(data)
    return dict(profile)


# -- a redelivered task's record -------------------------------------------------------------------------

class TaskRecord:
    """What a redelivered plugin task (a worker died in it) gave before: each payload's answer is
    recorded in the task's hash (``stoq:tries:<task id>``) as it is given, and an answer recorded by a
    previous delivery is reused instead of running the plugin again."""

    def __init__(self, r: redis.Redis, key: str) -> None:
        self.r, self.key = r, key
        with r.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.expire(key, BLOB_TTL)
            raw: dict[bytes, bytes] = pipe.execute()[0]  # no decode_responses: bytes
        self.known = {k.decode(): v for k, v in raw.items()}

    def answer(self, token: str) -> bytes | None:
        """The answer a previous delivery recorded for this item, if any."""
        return self.known.get(f"a:{token}")

    def record(self, token: str, answer: bytes) -> None:
        self.r.hset(self.key, f"a:{token}", answer)


def task_record(r: redis.Redis, task_id: str | None, redelivered: bool) -> TaskRecord | None:
    """The record of a redelivered task, None for a first delivery (which costs no Redis command).
    ``redelivered`` is the broker's flag: RabbitMQ's own, or kombu's on a message its Redis transport
    restored (a worker lost, a visibility timeout, a rejected task)."""
    return TaskRecord(r, f"{PREFIX}tries:{task_id}") if redelivered and task_id is not None else None
