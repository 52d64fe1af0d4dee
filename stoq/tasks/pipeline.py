"""The scan step as Celery tasks: publisher, plugin chords, collector, store connector, sweeper.

A scan advances in *waves*, breadth first, exactly as ``Engine.scan`` does in one process:

1. ``stoq.publish`` (queue ``stoq``) takes a batch of root references from ``stoq submit``: for each
   payload of a wave it runs ``Engine.begin`` (hashes, type, duplicates, dispatch plan), keeps the
   scan's state in Redis, and sends one chord: a task per plugin per chunk of at most ``batch_max``
   references (``stoq.worker.yara`` on queue ``yara`` ...), then ``stoq.collect``.
2. ``stoq.collect`` applies the answers in the embedded order (payloads of the wave in order, each
   one's plugins in plan order) through ``Engine.absorb``: the budget admits or flags each child; the
   admitted children are the next wave, begun at once and sent as the next chord.
3. A scan with no next wave is finished: the collector saves its document to the result store right
   away (one transaction per batch, idempotent by scan id; if that fails, the retrying
   ``stoq.connector.store`` task takes over) and hands it to a waiting ``stoq submit``.

Waves of many scans travel together, so a batch of 32 small files costs a few messages, not 32 x 5.
Every state change of a scan is one Redis transaction guarded by the wave token; a late or duplicated
chord finds another token and changes nothing. A wave left unanswered for ``sweep_after`` seconds
(a lost message, a broken chord) is closed by the sweeper that runs in every worker.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import redis
from celery import Celery, chord, signature

from stoq.config import ConfigError, Settings, load_settings
from stoq.dispatch import Planned
from stoq.engine import Engine, Pending
from stoq.limits import Budget
from stoq.model import SCHEMA_VERSION, PayloadRecord, clean, new_id
from stoq.tasks import state as st
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE
from stoq.tasks.guard import process_guard
from stoq.tasks.state import ScanState

log = logging.getLogger(__name__)

SWEEP_EVERY = 5.0

_SETTINGS: Settings | None = None
_ENGINES: OrderedDict[str, Engine] = OrderedDict()
_CONNECTORS: dict[str, Any] = {}


def worker_settings() -> Settings:
    """This process's settings (stoq.toml, STOQ_*): the archive, the store, the cluster's knobs."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = load_settings()
    return _SETTINGS


def redis_client(app: Celery) -> redis.Redis:
    return st.connect(str(app.conf.result_backend))


def connector_for(r: redis.Redis, profile_id: str, name: str) -> Any:
    """The connector plugin ``name`` set up with a submission's profile (kept per process)."""
    from stoq.connectors import open_connectors

    key = f"{profile_id}:{name}"
    if key not in _CONNECTORS:
        settings = worker_settings().model_copy(update=st.get_profile(r, profile_id) | {"connectors": [name]})
        (_CONNECTORS[key],) = open_connectors(settings)
    return _CONNECTORS[key]


def engine_for(r: redis.Redis, profile_id: str) -> Engine:
    """The engine for a submission's profile (its workers, options and limits over this worker's
    settings); a few are kept per process, since building one compiles YARA rules."""
    eng = _ENGINES.get(profile_id)
    if eng is None:
        settings = worker_settings().model_copy(update=st.get_profile(r, profile_id))
        eng = _ENGINES[profile_id] = Engine(settings)
        while len(_ENGINES) > 4:
            _ENGINES.popitem(last=False)[1].close()
    else:
        _ENGINES.move_to_end(profile_id)
    return eng


# -- the two halves of a wave ------------------------------------------------------------------------

class Careful(st.Careful):
    """A redelivered publisher or collector: a payload that was being typed or dispatched every time a
    worker died is begun without libmagic and dispatch rules instead of taking the next worker down."""

    message = "the worker process died or hung while typing or dispatching this payload {attempts} times; quarantined"

    def __init__(self, r: redis.Redis, key: str, limit: int | None = None) -> None:
        super().__init__(r, key, worker_settings().quarantine_after if limit is None else limit)


def careful_for(r: redis.Redis, task_id: str | None) -> st.Careful | None:
    return st.careful_for(r, task_id, Careful, worker_settings().quarantine_after)


def begin_waves(r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]],
                careful: st.Careful | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Begins each scan's wave (new token, pending records); returns the plugin work: (profile,
    plugin) -> references, in wave order. Typing runs under the guard's hard time limit."""
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    guard = process_guard()
    for scan, items in waves:
        eng = engine_for(r, scan.profile)
        guard.timeout_for = eng.timeout_for
        scan.wave, scan.pending = new_id(), []
        for item in items:
            token = f"{scan.scan_id}:{item.sha256}"
            quarantined = careful.before(token) if careful else None
            started = eng.begin(item, scan.budget, activity=guard, quarantined=quarantined)
            if careful:
                careful.after(token)
            rec = started.record
            scan.pending.append({"record": rec.as_dict(), "errors": [e.as_dict() for e in started.errors],
                                 "plan": [[p.name, p.overrides, list(p.rules), p.save] for p in started.plan]})
            for p in started.plan:
                parts.setdefault((scan.profile, p.name), []).append({
                    "payload_id": rec.payload_id, "sha256": rec.sha256, "filename": rec.filename, "mime": rec.mime,
                    "depth": rec.depth, "meta": rec.meta, "overrides": p.overrides, "rules": list(p.rules),
                    "save": p.save})
        eng.archive.flush()
    return parts


def absorb_wave(r: redis.Redis, scan: ScanState, answers: dict[tuple[str, str], dict[str, Any]]) -> list[Pending]:
    """Applies the answers to the scan's pending wave in the embedded order; returns the next wave."""
    eng = engine_for(r, scan.profile)
    children: list[Pending] = []
    for entry in scan.pending:
        record = PayloadRecord(**entry["record"])
        errors = entry["errors"]
        for name, overrides, rules, save in entry["plan"]:
            answer = answers.get((record.payload_id, name))
            if answer is None:
                errors.append({"payload_id": record.payload_id, "plugin": name, "kind": "error",
                               "message": "the plugin task gave no answer for this payload"})
            elif "error" in answer:
                errors.append(answer["error"])
            elif not answer.get("skipped"):
                found = [Pending(None, c["filename"], meta=c["meta"], sha256=c["sha256"], known_size=c["size"])
                         for c in answer["children"]]
                planned = Planned(name, overrides, tuple(rules), save)
                children.extend(eng.absorb(record, name, planned, answer["result"], answer["flags"], found, scan.budget))
        scan.results.append(record.as_dict())
        scan.errors.extend(errors)
    scan.pending = []
    return children


# -- sending work --------------------------------------------------------------------------------------

def plugin_task_names(app: Celery) -> dict[str, str]:
    return app.conf.get("stoq_plugin_tasks") or {}


def send_wave(app: Celery, r: redis.Redis, scans: list[ScanState],
              parts: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    """One chord: a task per plugin per chunk of references, then ``stoq.collect`` for these scans."""
    if not scans:
        return
    batch_max = worker_settings().batch_max
    names = plugin_task_names(app)
    header, keys = [], []
    for (profile, plugin), refs in parts.items():
        for at in range(0, len(refs), batch_max):
            keys.append([profile, plugin])
            header.append((plugin, profile, refs[at:at + batch_max]))
    answer_limit = st.INLINE_LIMIT // max(1, len(header))  # the answers share the callback's message
    wrapped = [st.wrap(r, chunk) for _, _, chunk in header]
    sigs = [signature(names[plugin], args=(profile, refs), kwargs={"limit": answer_limit},
                      queue=plugin, app=app, argsrepr=describe_refs(profile, chunk), kwargsrepr="")
            for (plugin, profile, chunk), refs in zip(header, wrapped)]
    blobs = st.blob_keys(*wrapped)  # the collector deletes them once it has settled the wave
    batch = st.wrap(r, {"scans": [[s.scan_id, s.wave] for s in scans], "parts": keys}
                    | ({"blobs": blobs} if blobs else {}))
    chord(sigs)(signature("stoq.collect", args=(batch,), queue=COLLECT_QUEUE, app=app,
                          argsrepr=describe_ids("scans", [s.scan_id for s in scans]), kwargsrepr=""))


def describe_ids(what: str, ids: list[str]) -> str:
    """A task's arguments as Flower and the logs show them: short, readable, computed cheaply
    (Celery's own repr of a batch of references costs more than a plugin run on a small file)."""
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    return f"({len(ids)} {what}: {shown})"


def describe_refs(profile: str, refs: list[dict[str, Any]]) -> str:
    return f"(profile {profile}, " + describe_ids("payloads", [f"{r['payload_id']} {r['filename']}" for r in refs])[1:]


def send_store(app: Celery, scan_ids: list[str]) -> None:
    if scan_ids:
        app.send_task("stoq.connector.store", args=(scan_ids,), queue=COLLECT_QUEUE,
                      argsrepr=describe_ids("scans", scan_ids), kwargsrepr="")


def store_finished(app: Celery, scan_ids: list[str]) -> None:
    """Stores finished scans right here (the collector is the chord's last task: one hop less); if
    that fails, hands them to the ``stoq.connector.store`` task, which retries. Should this process die
    first, the sweeper finds the finished scans still registered and sends them to the store."""
    if not scan_ids:
        return
    try:
        store(app, scan_ids)
    except Exception as exc:  # the database is away, a connector cannot be sent: the task retries
        log.warning("storing %d finished scan(s) failed here (%s: %s); handing them to the store connector",
                    len(scan_ids), type(exc).__name__, exc)
        send_store(app, scan_ids)


def commit(pipe: Any, scans: list[ScanState]) -> None:
    """Writes the scans' states in the open transaction; keeps the sweeper's schedule. A finished
    scan stays registered until the store has saved it (``store`` removes it)."""
    deadline = time.time() + worker_settings().sweep_after
    for scan in scans:
        pipe.set(st.scan_key(scan.scan_id), scan.to_json(), ex=st.TTL)
    if scans:  # one command for the batch: each Redis command costs ~20 us of a worker's CPU
        pipe.zadd(st.ACTIVE, dict.fromkeys((scan.scan_id for scan in scans), deadline))


def settle(app: Celery, r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]],
           finished: list[ScanState], pipe: Any, careful: st.Careful | None = None) -> None:
    """Begins the next waves, commits every state in ``pipe`` (a watched pipeline or a plain one),
    then sends the next chord and stores the finished scans."""
    parts = begin_waves(r, waves, careful)
    waiting = []
    for scan, _ in waves:
        if any(entry["plan"] for entry in scan.pending):
            waiting.append(scan)
        else:  # nothing to run on this wave: its records are final now
            absorb_wave(r, scan, {})
            finished.append(scan)
    for scan in finished:
        scan.done = True
    pipe.multi()
    commit(pipe, waiting + finished)
    pipe.execute()
    send_wave(app, r, waiting, parts)
    store_finished(app, [s.scan_id for s in finished])


# -- the tasks' bodies ---------------------------------------------------------------------------------

def publish(app: Celery, profile_id: str, roots: Any, notify: str | None, task_id: str | None = None) -> None:
    """Starts a scan per root reference: ``{"scan_id", "sha256", "size", "filename", "source", "date"}``.
    A redelivered publish skips the scans it already started. A profile this worker cannot run (an
    unknown plugin, a bad option, a rule file missing here, limits too long for the broker) refuses
    the scans: the waiting client is told why."""
    from stoq.tasks.checks import visibility_problem

    r = redis_client(app)
    sent = roots
    try:
        roots = st.unwrap(r, roots)
    except LookupError as exc:  # a redelivery after the blob was settled (deleted below): done already
        log.warning("publish: %s; nothing to do", exc)
        return
    try:
        eng = engine_for(r, profile_id)
        for name in eng.settings.connectors:  # set up now: a connector that cannot start refuses too
            connector_for(r, profile_id, name)
        problem = visibility_problem(app, eng.settings)
        if problem:
            raise ConfigError(problem)
    except (ConfigError, LookupError) as exc:
        refuse(r, roots, notify, f"{type(exc).__name__}: {exc}")
        st.forget(r, st.blob_keys(sent))
        return
    known = st.load_states(r, [root["scan_id"] for root in roots])
    waves = []
    for root, existing in zip(roots, known):
        if existing is not None:
            continue
        scan = ScanState(root["scan_id"], root["date"], root["source"], profile_id, notify, eng.limits,
                         Budget(eng.limits))
        waves.append((scan, [Pending(None, root["filename"], sha256=root["sha256"], known_size=root["size"])]))
    careful = careful_for(r, task_id)
    with r.pipeline() as pipe:
        settle(app, r, waves, [], pipe, careful)
    st.forget(r, st.blob_keys(sent))


def refuse(r: redis.Redis, roots: list[dict[str, Any]], notify: str | None, message: str) -> None:
    log.error("refusing %d scan(s) of a submission: %s", len(roots), message)
    if notify:
        with r.pipeline(transaction=False) as pipe:
            for root in roots:
                pipe.rpush(notify, st.dumps({"scan_id": root["scan_id"], "refused": message}))
            pipe.expire(notify, st.BLOB_TTL)
            pipe.execute()


def collect(app: Celery, results: list[Any], batch: Any, task_id: str | None = None) -> None:
    """The chord's callback: applies a wave's answers, then settles the scans (next wave or done)."""
    r = redis_client(app)
    blobs = st.blob_keys(batch, *results)
    try:
        batch = st.unwrap(r, batch)
        parts = [st.unwrap(r, part) for part in results]
    except LookupError as exc:  # a redelivery after the blobs were settled (deleted below): done already
        log.warning("collect: %s; nothing to do", exc)
        return
    blobs += batch.get("blobs", [])  # the plugin tasks' references
    answers: dict[tuple[str, str], dict[str, Any]] = {}
    for (_profile, plugin), part in zip(batch["parts"], parts):
        for answer in part:
            answers[(answer["payload_id"], plugin)] = answer
    tokens = dict(batch["scans"])
    keys = [st.scan_key(s) for s in tokens]
    careful = careful_for(r, task_id)
    for _attempt in range(20):
        with r.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                loaded = [s for s in st.load_states(pipe, list(tokens))
                          if s is not None and s.wave == tokens[s.scan_id]]
                scans = [s for s in loaded if not s.done]
                # Finished by this very wave but still unstored: a redelivery of a collector that
                # died while storing them. Stored again below (idempotent).
                unstored = [s.scan_id for s in loaded if s.done]
                waves, finished = [], []
                for scan in scans:
                    children = absorb_wave(r, scan, answers)
                    if children:
                        waves.append((scan, children))
                    else:
                        finished.append(scan)
                settle(app, r, waves, finished, pipe, careful)
                store_finished(app, unstored)
                st.forget(r, blobs)
                return
            except redis.WatchError:
                continue  # the sweeper touched one of these scans: read them again
    raise RuntimeError(f"could not commit scans {list(tokens)}: they kept changing")


def document_of(scan: ScanState) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "scan_id": scan.scan_id, "date": scan.date,
            "source": clean(scan.source), "payloads": len(scan.results), "results": scan.results,
            "errors": scan.errors}


def store(app: Celery, scan_ids: list[str]) -> None:
    """The store connector: saves finished scans in one transaction, hands each document to the
    ``stoq submit`` waiting for it, then forgets the scans' states."""
    from stoq.tasks.connect import result_store

    r = redis_client(app)
    scans = [s for s in st.load_states(r, scan_ids) if s is not None and s.done]
    if not scans:
        return
    docs = [document_of(s) for s in scans]
    result_store().save(docs)  # idempotent: a redelivered connector changes nothing
    by_notify: dict[str, list[bytes]] = {}
    for scan, doc in zip(scans, docs):
        if scan.notify:
            by_notify.setdefault(scan.notify, []).append(st.dumps(doc))
    with r.pipeline(transaction=False) as pipe:  # a few commands per batch, not per scan
        for notify, payloads in by_notify.items():
            pipe.rpush(notify, *payloads)
            pipe.expire(notify, st.BLOB_TTL)
        pipe.delete(*(st.scan_key(scan.scan_id) for scan in scans))
        pipe.zrem(st.ACTIVE, *(scan.scan_id for scan in scans))
        pipe.execute()
    # The chain goes on: each configured connector, with the scans of each submission profile.
    by_profile: dict[str, list[str]] = {}
    for scan in scans:
        by_profile.setdefault(scan.profile, []).append(scan.scan_id)
    for profile_id, ids in by_profile.items():
        for name in st.get_profile(r, profile_id).get("connectors") or []:
            app.send_task(f"stoq.connector.{name}", args=(profile_id, ids), queue=name,
                          argsrepr=describe_ids("scans", ids), kwargsrepr="")


def sweep(app: Celery, now: float | None = None) -> list[str]:
    """Closes scans whose wave is overdue: each payload of the wave is kept with a ``timeout`` error
    per plugin that never answered. A finished scan still unstored that long (its collector died
    before storing it) is sent to the store again. Returns the closed and re-sent scan ids."""
    r = redis_client(app)
    due: list[bytes] = r.zrangebyscore(st.ACTIVE, 0, now or time.time(), start=0, num=100)  # type: ignore[assignment]
    overdue = [s.decode() for s in due]
    closed, unstored = [], []
    for scan_id in overdue:
        with r.pipeline() as pipe:
            try:
                pipe.watch(st.scan_key(scan_id))
                (scan,) = st.load_states(pipe, [scan_id])
                pipe.multi()
                if scan is None:
                    pipe.zrem(st.ACTIVE, scan_id)
                    pipe.execute()
                    continue
                if scan.done:
                    pipe.zadd(st.ACTIVE, {scan_id: time.time() + worker_settings().sweep_after})
                    pipe.execute()
                    unstored.append(scan_id)
                    continue
                message = (f"no answer within {worker_settings().sweep_after:g} s (a lost task or chord); "
                           "the scan was closed by the sweeper")
                for entry in scan.pending:
                    entry["errors"] += [{"payload_id": entry["record"]["payload_id"], "plugin": name,
                                         "kind": "timeout", "message": message} for name, *_ in entry["plan"]]
                    entry["plan"] = []
                absorb_wave(r, scan, {})
                scan.done = True
                commit(pipe, [scan])
                pipe.execute()
                closed.append(scan_id)
            except redis.WatchError:
                continue  # answered meanwhile
    send_store(app, closed + unstored)
    if closed:
        log.warning("sweeper closed %d overdue scan(s): %s", len(closed), ", ".join(closed))
    if unstored:
        log.warning("sweeper sent %d finished but unstored scan(s) to the store: %s", len(unstored),
                    ", ".join(unstored))
    return closed + unstored
