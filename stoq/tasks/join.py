"""The join of a wave: what a chord would do, without Celery's result backend.

A wave is one Redis hash, ``stoq:wave:<id>``: ``batch`` (its scans with their wave tokens, and its
parts: one per plugin per chunk of at most ``batch_max`` references), each part's references
(``r:<n>``) and, as they come, each part's answers (``a:<n>``). The publisher or collector writes it
in the transaction that commits its scans' states (``Wave.write``), then sends one ``group`` whose
messages name the wave and the part only (``Wave.send``). Each plugin task writes its answers in one
transaction with the count of the hash's fields (``put_answer``); the one that sees every part
answered sends ``stoq.collect``. The answers are written once and read once, as JSON only stoq reads.
"""

from __future__ import annotations

from typing import Any, Iterable

import orjson
import redis
from celery import Celery, group, signature

from stoq.tasks.plumbing import BLOB_TTL, PREFIX, describe_batch
from stoq.tasks.scans import ScanState

#: (payload id, plugin) -> that plugin's answer for that payload.
Answers = dict[tuple[str, str], dict[str, Any]]


def wave_key(wave_id: str) -> str:
    return f"{PREFIX}wave:{wave_id}"


def part_field(part: int) -> str:
    """The field of a wave's hash that holds the references of plugin task ``part``."""
    return f"r:{part}"


def answer_field(part: int) -> str:
    """The field of a wave's hash that holds the answers of plugin task ``part``."""
    return f"a:{part}"


def put_answer(r: redis.Redis, wave_id: str, part: int, parts: int, answers: bytes) -> bool:
    """Records the answers of one of a wave's ``parts`` plugin tasks, in one transaction with the count
    of the wave's fields; True when every part has answered. A redelivered task records the same field
    again (the count does not move), so the wave is complete once, whatever the redeliveries; it may
    then say so again, and the collector's wave tokens make a second collection change nothing."""
    key = wave_key(wave_id)
    with r.pipeline() as pipe:
        pipe.hset(key, answer_field(part), answers)
        pipe.expire(key, BLOB_TTL)  # also bounds a late duplicate that finds the wave settled (deleted)
        pipe.hlen(key)
        fields = pipe.execute()[-1]
    return int(fields) == 1 + 2 * parts  # the batch, every part's references, every part's answers


def wave_answers(fields: dict[bytes, bytes], parts: list[Any]) -> Answers:
    """(payload id, plugin) -> answer, for every part of a wave (its hash's ``fields``) that answered."""
    answers: Answers = {}
    for part, (_profile, plugin) in enumerate(parts):
        raw = fields.get(answer_field(part).encode())
        for answer in orjson.loads(raw) if raw is not None else ():
            answers[(answer["payload_id"], plugin)] = answer
    return answers


def plugin_task_names(app: Celery) -> dict[str, str]:
    return app.conf.get("stoq_plugin_tasks") or {}


def describe_refs(profile: str, refs: list[dict[str, Any]]) -> str:
    return describe_batch(profile, "payloads", [f"{r['payload_id']} {r['filename']}" for r in refs])


def unanswered(fields: dict[bytes, bytes], parts: list[Any]) -> list[int]:
    """The parts of a wave (its hash's ``fields``) that have not answered yet."""
    return [part for part in range(len(parts)) if answer_field(part).encode() not in fields]


def send_parts(app: Celery, wave_id: str, count: int,
               tasks: Iterable[tuple[int, str, str, list[dict[str, Any]]]]) -> None:
    """One ``group``: a plugin task per (part, plugin, profile, references) of a wave of ``count``
    parts; each message carries the wave id and its part only (the references label it in Flower)."""
    names = plugin_task_names(app)
    group(signature(names[plugin], args=(profile, wave_id, part, count), queue=plugin, app=app,
                    argsrepr=describe_refs(profile, refs), kwargsrepr="")
          for part, plugin, profile, refs in tasks).apply_async()


def send_again(app: Celery, wave_id: str, fields: dict[bytes, bytes], parts: list[Any], which: list[int]) -> None:
    """Sends the plugin tasks of the wave's parts ``which`` again, as ``Wave.send`` sent them: the
    same wave, part and count, so that a task that answers after all (and its resent twin) writes the
    same field, and the wave completes once."""
    send_parts(app, wave_id, len(parts), ((part, parts[part][1], parts[part][0],
                                           orjson.loads(fields.get(part_field(part).encode(), b"[]")))
                                          for part in which))


class Wave:
    """The plugin tasks of one wave: the hash fields to write with the scans' states, then the group."""

    def __init__(self, wave_id: str, scans: list[ScanState], parts: dict[tuple[str, str], list[dict[str, Any]]],
                 batch_max: int) -> None:
        self.wave_id, self.scans = wave_id, scans
        self.tasks: list[tuple[str, str, list[dict[str, Any]]]] = [
            (plugin, profile, refs[at:at + batch_max])
            for (profile, plugin), refs in parts.items() for at in range(0, len(refs), batch_max)] if scans else []

    def write(self, pipe: Any) -> None:
        """The wave's hash, in the transaction that commits its scans' states."""
        if not self.tasks:
            return
        batch = {"scans": [[s.scan_id, s.wave] for s in self.scans], "parts": [[p, n] for n, p, _ in self.tasks]}
        key = wave_key(self.wave_id)
        pipe.hset(key, mapping={"batch": orjson.dumps(batch)} | {
            part_field(i): orjson.dumps(chunk) for i, (_, _, chunk) in enumerate(self.tasks)})
        pipe.expire(key, BLOB_TTL)

    def send(self, app: Celery) -> None:
        """One ``group``: a task per plugin per chunk; each message carries the wave id and its part."""
        if self.tasks:
            send_parts(app, self.wave_id, len(self.tasks),
                       ((i, plugin, profile, chunk) for i, (plugin, profile, chunk) in enumerate(self.tasks)))
