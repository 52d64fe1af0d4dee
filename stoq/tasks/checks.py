"""Start-up checks of a worker, and the (opt-in) measurement of broker message sizes."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from stoq.engine import TIME_LIMIT
from stoq.runner import HARD_GRACE
from stoq.tasks.settings import worker_settings

#: Redis redelivers an unacknowledged task after this many seconds (kombu's default).
REDIS_DEFAULT_VISIBILITY = 3600


class SettingsRefused(SystemExit):
    """A combination of settings that would break a guarantee; the worker does not start."""


def longest_task(settings: Any) -> float:
    """Seconds the longest plugin task may run: a full batch, each payload up to its hard limit."""
    limits = [settings.timeout] + [float(o[TIME_LIMIT]) for o in settings.plugins.values() if TIME_LIMIT in o]
    return settings.batch_max * (max(limits) + HARD_GRACE)


def visibility_problem(app: Celery, settings: Any) -> str | None:
    """Why ``settings`` cannot run on this broker, or None: a Redis visibility timeout shorter than the
    longest task would hand a task that is still running to a second worker (the batch would run twice)."""
    broker = str(app.conf.broker_url or "")
    if not broker.startswith(("redis://", "rediss://", "redis+socket://")):
        return None
    options = app.conf.broker_transport_options or {}
    visibility = float(options.get("visibility_timeout", REDIS_DEFAULT_VISIBILITY))
    needed = longest_task(settings)
    if visibility > needed:
        return None
    return (f"the Redis visibility timeout ({visibility:g} s) is not longer than the longest plugin task "
            f"({needed:g} s = batch_max {settings.batch_max} x (time limit + {HARD_GRACE:g} s grace)); a running "
            f"task would be delivered twice. Raise broker_transport_options['visibility_timeout'] "
            f"(STOQ_VISIBILITY_TIMEOUT) or lower STOQ_BATCH_MAX / the time limits.")


def refuse_bad_settings(app: Celery) -> None:
    """A worker does not start with settings that would break a guarantee (see ``visibility_problem``)."""
    problem = visibility_problem(app, worker_settings())
    if problem:
        raise SettingsRefused(f"stoq: refusing to start: {problem}")


_WATCHING = False


def wire_size(body: Any, headers: Any, properties: Any, serializer: str = "json", exchange: Any = "",
              routing_key: Any = "") -> int:
    """Bytes of a task message as a Redis broker stores it: kombu's JSON envelope of the body (serialized
    as the producer will, then base64-encoded), the headers (``argsrepr`` among them) and the properties.
    An AMQP broker carries the body without base64 and the headers as a binary table, so this is an
    upper bound there."""
    import base64

    from kombu.serialization import dumps as serialize
    from kombu.utils.json import dumps as to_json
    from kombu.utils.uuid import uuid

    content_type, encoding, data = serialize(body, serializer=serializer)
    if isinstance(data, str):
        data = data.encode(encoding or "utf-8")
    props = dict(properties or {})  # what the producer publishes with: Celery copies argsrepr here too
    props.setdefault("delivery_mode", 2)
    props.update(body_encoding="base64", delivery_tag=uuid(), priority=props.get("priority") or 0,
                 delivery_info={"exchange": exchange or "", "routing_key": routing_key or ""})
    envelope = {"body": base64.b64encode(data).decode("ascii"), "content-encoding": encoding,
                "content-type": content_type, "headers": headers or {}, "properties": props}
    return len(to_json(envelope).encode())


def watch_message_sizes(app: Celery) -> None:
    """With ``STOQ_MEASURE_MESSAGES`` set (tests, benchmarks), records the largest task message (the
    whole message, headers included: see ``wire_size``) and task result, in bytes, in Redis
    (``stoq:measure:*``) and counts the messages sent."""
    global _WATCHING
    if _WATCHING or not os.environ.get("STOQ_MEASURE_MESSAGES"):
        return
    _WATCHING = True
    import orjson

    from stoq.tasks.plumbing import PREFIX, connect

    def record(kind: str, size: int) -> None:
        r = connect(str(app.conf.result_backend))
        with r.pipeline(transaction=False) as pipe:
            pipe.incr(f"{PREFIX}measure:{kind}:count")
            pipe.eval("local v = tonumber(redis.call('get', KEYS[1]) or '0'); if ARGV[1] + 0 > v then "
                      "redis.call('set', KEYS[1], ARGV[1]) end", 1, f"{PREFIX}measure:{kind}:max", size)
            pipe.execute()

    @signals.before_task_publish.connect(weak=False)
    def _sent(body: Any = None, headers: Any = None, properties: Any = None, exchange: Any = None,
              routing_key: Any = None, **_: Any) -> None:
        record("task", wire_size(body, headers, properties, str(app.conf.task_serializer), exchange, routing_key))

    @signals.task_success.connect(weak=False)
    def _answered(result: Any = None, **_: Any) -> None:
        record("result", len(orjson.dumps(result)))
