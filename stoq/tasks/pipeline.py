"""The scan step as Celery tasks: publisher, plugin tasks, collector, store connector.

A scan advances in *waves*, breadth first, exactly as ``Engine.scan`` does in one process:

1. ``stoq.publish`` (queue ``stoq``) takes a batch of root references from ``stoq submit``: for each
   payload of a wave it runs ``Engine.begin`` (hashes, type, duplicates, dispatch plan), keeps the
   scan's state in Redis, writes the wave (``stoq:wave:<id>``: its scans and, per plugin task, at most
   ``batch_max`` references) and fans out a ``group``: a task per plugin per chunk of references
   (``stoq.worker.yara`` on queue ``yara`` ...), whose message names the wave and its part only.
2. Each plugin task writes its answers into the wave's hash, in one transaction with the count of the
   answers so far (``state.put_answer``); the task whose answers complete the wave sends
   ``stoq.collect``. This is the join a chord would do, without Celery's result backend: the answers
   are written once and read once, as JSON that only stoq reads.
3. ``stoq.collect`` applies the answers in the embedded order (payloads of the wave in order, each
   one's plugins in plan order) through ``Engine.absorb``: the budget admits or flags each child; the
   admitted children are the next wave, begun at once and sent the same way.
4. A scan with no next wave is finished: the collector saves its document to the result store (one
   transaction per batch, idempotent by scan id), then, in the one Redis transaction that settles the
   wave, hands it to the waiting ``stoq submit`` and forgets its state. If the save fails, the
   finished state is kept and the retrying ``stoq.connector.store`` task takes over.

Waves of many scans travel together, so a batch of 64 small files costs four messages, not 64 x 4.
Every state change of a scan is one Redis transaction guarded by the wave token; a late or duplicated
collector finds another token (or no wave) and changes nothing. A wave left unanswered for
``sweep_after`` seconds (a lost message, a dead worker's task not yet redelivered) is closed by the
sweeper that runs in every worker (``stoq.tasks.sweeper``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import redis
import orjson
from celery import Celery, group, signature

from stoq.archive import ArchiveError
from stoq.config import ConfigError, Settings, load_settings
from stoq.dispatch import Planned
from stoq.engine import Engine, Pending, flag_error
from stoq.limits import Budget
from stoq.model import PayloadRecord, assemble, new_id
from stoq.tasks import state as st
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE
from stoq.tasks.guard import process_guard
from stoq.tasks.state import ScanState

log = logging.getLogger(__name__)


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
        own = worker_settings()
        profile = st.get_profile(r, profile_id)
        # The archive is this worker's (its address may differ from the client's: minio:9000 in compose,
        # localhost:9000 outside): its archiver's options are never the submission's.
        profile["plugins"] = dict(profile.get("plugins", {})) | {own.archiver: own.plugins.get(own.archiver, {})}
        settings = own.model_copy(update=profile)
        eng = _ENGINES[profile_id] = Engine(settings)
        while len(_ENGINES) > 4:
            _ENGINES.popitem(last=False)[1].close()
    else:
        _ENGINES.move_to_end(profile_id)
    return eng


# -- transient failures ---------------------------------------------------------------------------------

#: Seconds slept before each new try of a task body that met a transient broker or database error.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a broker, Redis or database connection failure that may pass (a restart, a
    pause, a failover), rather than a fault of the work itself."""
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import OperationalError as DatabaseError

    seen: BaseException | None = exc
    for _ in range(4):  # StoreError wraps the driver's error
        if isinstance(seen, (redis.ConnectionError, redis.TimeoutError, BrokerError, DatabaseError, ConnectionError)):
            return True
        if type(seen).__name__ == "OperationalError":  # psycopg2's, without importing it here
            return True
        seen = seen.__cause__ if seen is not None else None
    return False


def retrying(what: str, body: Any, *args: Any, **kwargs: Any) -> Any:
    """Runs a task body, again after each transient failure (``transient``), ``RETRY_DELAYS`` apart;
    the last failure is raised (the ledger then publishes the scan again). Every body is safe to
    run again: its writes are idempotent or guarded by wave tokens."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return body(*args, **kwargs)
        except Exception as exc:
            if delay is None or not transient(exc):
                raise
            log.warning("%s: %s: %s; trying again in %g s", what, type(exc).__name__, exc, delay)
            time.sleep(delay)


# -- the two halves of a wave ------------------------------------------------------------------------

class Careful(st.Careful):
    """A redelivered publisher or collector: a payload that was being typed or dispatched every time a
    worker died is begun without libmagic and dispatch rules instead of taking the next worker down."""

    message = "the worker process died or hung while typing or dispatching this payload {attempts} times; quarantined"

    def __init__(self, r: redis.Redis, key: str, limit: int | None = None) -> None:
        super().__init__(r, key, worker_settings().quarantine_after if limit is None else limit)


def careful_for(r: redis.Redis, task_id: str | None, redelivered: bool) -> st.Careful | None:
    return st.careful_for(r, task_id, redelivered, Careful, worker_settings().quarantine_after)


def begin_waves(r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]], wave_id: str,
                careful: st.Careful | None = None) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Begins each scan's next wave (token ``wave_id``, pending records); returns the plugin work:
    (profile, plugin) -> references, in wave order. Typing runs under the guard's hard time limit."""
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    guard = process_guard(r)
    for scan, items in waves:
        eng = engine_for(r, scan.profile)
        guard.timeout_for = eng.timeout_for
        scan.wave, scan.pending = wave_id, []
        left, shape = scan.budget.left(), (len(items), sum(item.size for item in items))  # as embedded (Engine.begin)
        for item in items:
            token = f"{scan.scan_id}:{item.sha256}"
            quarantined = careful.before(token) if careful else None
            started = eng.begin(item, scan.budget, activity=guard, quarantined=quarantined, left=left,
                                wave=shape)
            if careful:
                careful.after(token)
            rec = started.record
            scan.pending.append({"record": rec.as_dict(), "errors": [e.as_dict() for e in started.errors],
                                 "plan": [[p.name, p.overrides, list(p.rules), p.save] for p in started.plan]})
            for p in started.plan:
                parts.setdefault((scan.profile, p.name), []).append({
                    "payload_id": rec.payload_id, "sha256": rec.sha256, "filename": rec.filename, "mime": rec.mime,
                    "depth": rec.depth, "meta": rec.meta, "overrides": p.overrides, "rules": list(p.rules),
                    "save": p.save, "at": item.at, "bytes_left": started.bytes_left,
                    "source_path": started.source_path})
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
                flag_error(record, answer["error"]["kind"])
            elif not answer.get("skipped"):
                found = [Pending(None, c["filename"], meta=c["meta"], sha256=c["sha256"], known_size=c["size"],
                                 at=c.get("at")) for c in answer["children"]]
                planned = Planned(name, overrides, tuple(rules), save)
                children.extend(eng.absorb(record, name, planned, answer["result"], answer["flags"], found, scan.budget,
                                           answer.get("extracted_bytes")))
        scan.results.append(record.as_dict())
        scan.errors.extend(errors)
    scan.pending = []
    return children


# -- sending work --------------------------------------------------------------------------------------

def plugin_task_names(app: Celery) -> dict[str, str]:
    return app.conf.get("stoq_plugin_tasks") or {}


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
        key = st.wave_key(self.wave_id)
        pipe.hset(key, mapping={"batch": orjson.dumps(batch)} | {
            st.part_field(i): orjson.dumps(chunk) for i, (_, _, chunk) in enumerate(self.tasks)})
        pipe.expire(key, st.BLOB_TTL)

    def send(self, app: Celery) -> None:
        """One ``group``: a task per plugin per chunk; each message carries the wave id and its part."""
        if not self.tasks:
            return
        names = plugin_task_names(app)
        count = len(self.tasks)
        group(signature(names[plugin], args=(profile, self.wave_id, i, count), queue=plugin, app=app,
                        argsrepr=describe_refs(profile, chunk), kwargsrepr="")
              for i, (plugin, profile, chunk) in enumerate(self.tasks)).apply_async()


def describe_refs(profile: str, refs: list[dict[str, Any]]) -> str:
    return st.describe_batch(profile, "payloads", [f"{r['payload_id']} {r['filename']}" for r in refs])


def send_store(app: Celery, scan_ids: list[str]) -> None:
    if scan_ids:
        app.send_task("stoq.connector.store", args=(scan_ids,), queue=COLLECT_QUEUE,
                      argsrepr=st.describe_ids("scans", scan_ids), kwargsrepr="")


def commit(pipe: Any, scans: list[ScanState]) -> None:
    """Writes the scans' states in the open transaction; keeps the sweeper's schedule. A finished
    scan stays registered until the store has saved it (``forget_stored`` removes it)."""
    deadline = time.time() + worker_settings().sweep_after
    for scan in scans:
        pipe.set(st.scan_key(scan.scan_id), scan.to_json(), ex=st.TTL)
    if scans:  # one command for the batch: each Redis command costs ~20 us of a worker's CPU
        pipe.zadd(st.ACTIVE, dict.fromkeys((scan.scan_id for scan in scans), deadline))


def save_documents(scans: list[ScanState]) -> list[dict[str, Any]]:
    """Saves finished scans' documents in one transaction (idempotent: a redelivery changes nothing)."""
    from stoq.tasks.connect import result_store

    docs = [document_of(s) for s in scans]
    result_store().save(docs)
    return docs


def forget_stored(pipe: Any, scans: list[ScanState], docs: list[dict[str, Any]]) -> None:
    """In ``pipe``: hands each stored document to the ``stoq submit`` waiting for it, then forgets the
    scans' states (a few commands per batch, not per scan)."""
    by_notify: dict[str, list[bytes]] = {}
    for scan, doc in zip(scans, docs):
        if scan.notify:
            by_notify.setdefault(scan.notify, []).append(st.dumps(doc))
    for notify, payloads in by_notify.items():
        pipe.rpush(notify, *payloads)
        pipe.expire(notify, st.BLOB_TTL)
    if scans:
        pipe.delete(*(st.scan_key(scan.scan_id) for scan in scans))
        pipe.zrem(st.ACTIVE, *(scan.scan_id for scan in scans))


def send_connectors(app: Celery, r: redis.Redis, scans: list[ScanState]) -> None:
    """The chain goes on: each configured connector, with the stored scans of each submission profile."""
    by_profile: dict[str, list[str]] = {}
    for scan in scans:
        by_profile.setdefault(scan.profile, []).append(scan.scan_id)
    for profile_id, ids in by_profile.items():
        for name in st.get_profile(r, profile_id).get("connectors") or []:
            app.send_task(f"stoq.connector.{name}", args=(profile_id, ids), queue=name,
                          argsrepr=st.describe_ids("scans", ids), kwargsrepr="")


def settle(app: Celery, r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]],
           finished: list[ScanState], pipe: Any, careful: st.Careful | None = None,
           settled: str | None = None) -> None:
    """Begins the next waves; saves the finished scans; then, in one transaction in ``pipe`` (a
    watched pipeline or a plain one), writes every state and the next wave, hands the stored
    documents to their clients and deletes the ``settled`` wave; then sends the next plugin tasks.

    The finished scans are saved first, here (the collector is the last task of a scan: no hop to a
    store task). Should this process die before the transaction, the task is redelivered and does
    it all again (the save is idempotent). Should the save fail (the database is away), the scans
    are committed as finished and handed to the ``stoq.connector.store`` task, which retries."""
    wave_id = new_id()
    parts = begin_waves(r, waves, wave_id, careful)
    waiting = []
    for scan, _ in waves:
        if any(entry["plan"] for entry in scan.pending):
            waiting.append(scan)
        else:  # nothing to run on this wave: its records are final now
            absorb_wave(r, scan, {})
            finished.append(scan)
    wave = Wave(wave_id, waiting, parts, worker_settings().batch_max)
    for scan in finished:
        scan.done = True
    docs: list[dict[str, Any]] | None = None
    if finished:
        try:
            docs = save_documents(finished)
        except Exception as exc:  # the database is away: the store connector task retries
            log.warning("storing %d finished scan(s) failed here (%s: %s); handing them to the store connector",
                        len(finished), type(exc).__name__, exc)
    pipe.multi()
    commit(pipe, waiting + (finished if docs is None else []))
    if docs is not None:
        forget_stored(pipe, finished, docs)
    wave.write(pipe)
    if settled is not None:
        pipe.delete(st.wave_key(settled))
    pipe.execute()
    # Committed: the task must not fail now on a broker hiccup, for its next run (a retry, a
    # redelivery) finds this wave settled and would send nothing; so the sends retry on their own.
    retrying("sending the next wave", wave.send, app)
    if docs is None:
        retrying("sending to the store", send_store, app, [s.scan_id for s in finished])
    elif finished:
        send_connectors(app, r, finished)


# -- the tasks' bodies ---------------------------------------------------------------------------------

def publish(app: Celery, profile_id: str, roots: Any, notify: str | None, task_id: str | None = None,
            redelivered: bool = False, verdicts: str | None = None) -> None:
    """Starts a scan per root reference: ``{"scan_id", "sha256", "size", "filename", "source", "date",
    "at"}`` (``at``: the payload's place in the archive, or null).
    A redelivered publish skips the scans it already started. A profile this worker cannot run (an
    unknown plugin, a bad option, a rule file missing here, limits too long for the broker) refuses
    the scans: the waiting client is told why. ``verdicts``: the list where a client that does not
    wait for the documents (``--no-wait``) learns that its scans were begun (``{"accepted": [scan
    ids]}``) or refused (one ``{"scan_id", "refused"}`` each)."""
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
        refuse(r, roots, [notify, verdicts], f"{type(exc).__name__}: {exc}")
        st.forget(r, st.blob_keys(sent))
        return
    # Only a redelivery can find scans it started before (a first delivery skips the look-up; were a
    # duplicate not flagged, its scans would start again, the later wave token win, and the store
    # keep one document per scan id).
    # A scan the ledger publishes again (``attempt``) may have been started meanwhile by a late first publish.
    again = redelivered or any(root.get("attempt") for root in roots)
    known = st.load_states(r, [root["scan_id"] for root in roots]) if again else [None] * len(roots)
    stored = finished_already([root["scan_id"] for root in roots])
    waves = []
    for root, existing in zip(roots, known):
        if existing is not None or root["scan_id"] in stored:
            continue
        scan = ScanState(root["scan_id"], root["date"], root["source"], profile_id, notify, eng.limits,
                         Budget(eng.limits))
        path = (root.get("source") or {}).get("path")
        waves.append((scan, [Pending(None, root["filename"], sha256=root["sha256"], known_size=root["size"],
                                     at=root.get("at"), source_path=path if isinstance(path, str) else None)]))
    careful = careful_for(r, task_id, redelivered)
    try:
        with r.pipeline() as pipe:
            settle(app, r, waves, [], pipe, careful)
    except (ArchiveError, OSError) as exc:  # the roots cannot be read here: say so, never leave the client waiting
        refuse(r, [root for root, existing in zip(roots, known) if existing is None], [notify, verdicts],
               f"cannot read the submitted files from this worker's archive ({type(exc).__name__}: {exc}); "
               f"do the client and the workers share it (STOQ_ARCHIVER, STOQ_ARCHIVE)?")
    else:
        if verdicts:  # every root of the batch: a redelivery's earlier delivery may have died before this
            tell(r, verdicts, [st.dumps({"accepted": [root["scan_id"] for root in roots]})])
    st.forget(r, st.blob_keys(sent))


def finished_already(scan_ids: list[str]) -> set[str]:
    """Those of ``scan_ids`` the ledger holds as finished: a publish that comes after its scan was
    stored (the ledger's, or a client's, sent again while the first was queued; a late first one)
    must not begin it again: a second run's payloads have other ids, and would be stored beside
    the first's. The database away: none (that rare second run is then not prevented)."""
    from stoq import ledger
    from stoq.tasks.connect import result_store

    try:
        return {i for i, state in ledger.states(result_store(), scan_ids).items() if state == ledger.FINISHED}
    except Exception as exc:
        log.warning("publish: cannot read the ledger (%s: %s); beginning every scan", type(exc).__name__, exc)
        return set()


def tell(r: redis.Redis, key: str, entries: list[bytes]) -> None:
    """Appends entries to a client's list (documents, verdicts), which expires if nobody reads it."""
    with r.pipeline(transaction=False) as pipe:
        pipe.rpush(key, *entries)
        pipe.expire(key, st.BLOB_TTL)
        pipe.execute()


def refuse(r: redis.Redis, roots: list[dict[str, Any]], clients: list[str | None], message: str) -> None:
    """Tells the submitting client (its documents' or its verdicts' list) that these scans will not
    run, and logs it with their ids."""
    log.error("refusing scan(s) %s of a submission: %s", ", ".join(root["scan_id"] for root in roots), message)
    entries = [st.dumps({"scan_id": root["scan_id"], "refused": message}) for root in roots]
    try:  # the ledger says so too (``stoq results ID``), and does not publish them again
        from stoq import ledger
        from stoq.tasks.connect import result_store

        ledger.refuse(result_store(), [root["scan_id"] for root in roots], message)
    except Exception as exc:  # the database away: the ledger republishes them, and they are refused again
        log.warning("cannot record the refusal in the ledger (%s: %s)", type(exc).__name__, exc)
    for key in clients:
        if key and entries:
            tell(r, key, entries)


def collect(app: Celery, wave_id: str, task_id: str | None = None, redelivered: bool = False) -> None:
    """Sent by the plugin task that completed a wave: applies the wave's answers, then settles its
    scans (next wave, or done and stored) and deletes the wave."""
    r = redis_client(app)
    fields: dict[bytes, bytes] = r.hgetall(st.wave_key(wave_id))  # type: ignore[assignment]
    if b"batch" not in fields:  # a redelivery, or a duplicate, after the wave was settled: done already
        log.warning("collect: wave %s is settled already (or expired); nothing to do", wave_id)
        return
    batch = orjson.loads(fields[b"batch"])
    answers: dict[tuple[str, str], dict[str, Any]] = {}
    for part, (_profile, plugin) in enumerate(batch["parts"]):
        raw = fields.get(st.answer_field(part).encode())
        for answer in orjson.loads(raw) if raw is not None else ():  # missing: errors in absorb_wave
            answers[(answer["payload_id"], plugin)] = answer
    tokens = dict(batch["scans"])
    keys = [st.scan_key(s) for s in tokens]
    if not keys:
        st.forget(r, [st.wave_key(wave_id)])
        return
    careful = careful_for(r, task_id, redelivered)
    for _attempt in range(20):
        with r.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                scans = [s for s in st.load_states(pipe, list(tokens))
                         if s is not None and s.wave == tokens[s.scan_id] and not s.done]
                waves, finished = [], []
                for scan in scans:
                    children = absorb_wave(r, scan, answers)
                    if children:
                        waves.append((scan, children))
                    else:
                        finished.append(scan)
                settle(app, r, waves, finished, pipe, careful, settled=wave_id)
                return
            except redis.WatchError:
                continue  # the sweeper touched one of these scans: read them again
    raise RuntimeError(f"could not commit scans {list(tokens)}: they kept changing")


def document_of(scan: ScanState) -> dict[str, Any]:
    return assemble(scan.scan_id, scan.date, scan.source, scan.results, scan.errors)


def store(app: Celery, scan_ids: list[str]) -> None:
    """The store connector task (when the collector could not save, and for the sweeper): saves
    finished scans in one transaction, hands each document to the ``stoq submit`` waiting for it,
    forgets the scans' states, then sends the other configured connectors."""
    r = redis_client(app)
    scans = [s for s in st.load_states(r, scan_ids) if s is not None and s.done]
    if not scans:
        return
    docs = save_documents(scans)  # idempotent: a redelivered connector changes nothing
    with r.pipeline(transaction=False) as pipe:
        forget_stored(pipe, scans, docs)
        pipe.execute()
    send_connectors(app, r, scans)


def catch_up_connectors() -> None:
    """The workers' catch-up of the connector outbox (``stoq.outbox.catch_up``), with this worker's
    settings (they hold the connectors' secret options)."""
    from stoq.outbox import catch_up
    from stoq.tasks.connect import result_store

    result = catch_up(result_store(), worker_settings())
    for name, n in result.delivered.items():
        log.warning("connector %r: %d document(s) delivered from the outbox", name, n)
    for message in result.errors:
        log.error("%s; still kept in the outbox", message)
