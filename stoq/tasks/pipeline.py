"""The life of a scan in the cluster, in the order it happens (the diagram: docs/cluster.md, "The life
of a scan"). A scan advances in *waves*, breadth first, exactly as ``Engine.scan`` does in one process:

0. ``stoq submit`` (``stoq.tasks.client``) archives each file, records it in the ledger
   (``stoq.ledger``: durable before it is sent), and sends ``stoq.publish`` with a batch of root
   references.
1. ``publish`` (task ``stoq.publish``, queue ``stoq``): for each root, ``Engine.begin`` (hashes, type,
   duplicates, dispatch plan) through ``begin_waves``; then ``settle`` commits the scans' states and
   the wave (``stoq.tasks.join``) in one Redis transaction and fans out one ``group``: a task per
   plugin per chunk of at most ``batch_max`` references, whose message names the wave and its part.
2. ``run_part`` (task ``stoq.<category>.<plugin>``, queue ``<plugin>``, registered by
   ``stoq.tasks.adapter``): ``Engine.run_on`` on each reference of its part, the answers written into
   the wave's hash, counted in the same transaction (``join.put_answer``); the task whose answers
   complete the wave sends ``stoq.collect``.
3. ``collect`` (task ``stoq.collect``, queue ``stoq-collect``): ``absorb_wave`` applies the answers in
   the embedded order (payloads of the wave in order, each one's plugins in plan order) through
   ``Engine.absorb``: the budget admits or flags each child; the admitted children are the next wave,
   begun at once and sent by ``settle`` as in step 1.
4. A scan with no next wave is finished: ``settle`` saves its document to the result store (one
   transaction per batch, idempotent by scan id, which also marks the ledger's row finished), then,
   in the one Redis transaction that settles the wave, hands it to the waiting ``stoq submit`` and
   forgets its state. If the save fails, the finished state is kept and the retrying ``store`` task
   (``stoq.connector.store``) takes over; then the configured connectors run (``send_connectors``).

Off the main path: a wave left unanswered for ``sweep_after`` seconds has its unanswered parts sent
again by the sweeper (``stoq.tasks.sweeper``), then, still unanswered, is closed with what did arrive;
a scan lost with its state is published again from the ledger. Every state change of a scan is one
Redis transaction guarded by the wave token; a late or duplicated collector finds another token (or
no wave) and changes nothing.

Who is blamed when a worker dies: the guard (``stoq.tasks.guard``) charges the death to the content
and step running in that process, by sha256: a plugin in step 2, ``libmagic`` or ``dispatch`` while
a payload is begun (steps 1 and 3). Every delivery asks which of its payloads are quarantined and
answers those with the recorded error instead of running them again.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import orjson
import redis
from celery import Celery

from stoq import ledger
from stoq.archive import ArchiveError
from stoq.config import ConfigError
from stoq.dispatch import Planned
from stoq.engine import Activity, Engine, Pending, flag_error
from stoq.limits import Budget
from stoq.model import PayloadRecord, assemble, new_id
from stoq.tasks import guard as gd
from stoq.tasks.checks import visibility_problem
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE
from stoq.tasks.connect import result_store
from stoq.tasks.engines import connector_for, engine_for
from stoq.tasks.join import Answers, Wave, part_field, put_answer, wave_answers, wave_key
from stoq.tasks.plumbing import (TaskRecord, blob_keys, describe_ids, dumps, forget, get_profile, redis_client,
                                 task_record, tell, unwrap)
from stoq.tasks.retry import retrying, transient
from stoq.tasks.scans import ScanState, commit, forget_stored, load_states, scan_key
from stoq.tasks.settings import worker_settings

__all__ = ["COLLECT_QUEUE", "DEFAULT_QUEUE", "absorb_wave", "begin_waves", "catch_up_connectors", "collect",
           "publish", "retrying", "run_part", "settle", "store"]

log = logging.getLogger(__name__)

#: The guard's name for what follows libmagic's typing when a payload is begun: matching the dispatch
#: rules and making the plan. A death there is charged to ``dispatch`` on that content, a death while
#: typing to ``libmagic``.
DISPATCH = "dispatch"
#: The steps of ``Engine.begin`` a death can be charged to (``stoq:blame:<step>:<sha256>``).
BEGIN_STEPS = ("libmagic", DISPATCH)


# -- 1. publish ------------------------------------------------------------------------------------------

def publish(app: Celery, profile_id: str, roots: Any, notify: str | None, task_id: str | None = None,
            redelivered: bool = False, verdicts: str | None = None) -> None:
    """Starts a scan per root reference: ``{"scan_id", "sha256", "size", "filename", "source", "date",
    "at"}`` (``at``: the payload's place in the archive, or null).
    A redelivered publish skips the scans it already started. A profile this worker cannot run (an
    unknown plugin, a bad option, a rule file missing here, limits too long for the broker) refuses
    the scans: the waiting client is told why. ``verdicts``: the list where a client that does not
    wait for the documents (``--no-wait``) learns that its scans were begun (``{"accepted": [scan
    ids]}``) or refused (one ``{"scan_id", "refused"}`` each)."""
    r = redis_client(app)
    sent = roots
    try:
        roots = unwrap(r, roots)
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
        forget(r, blob_keys(sent))
        return
    # Only a redelivery can find scans it started before (a first delivery skips the look-up; were a
    # duplicate not flagged, its scans would start again, the later wave token win, and the store
    # keep one document per scan id).
    # A scan the ledger publishes again (``attempt``) may have been started meanwhile by a late first publish.
    # A first publish late enough for the ledger to have published its scans again meanwhile looks too
    # (were it not to, both runs would be stored under one scan id, their payloads side by side).
    again = redelivered or any(root.get("attempt") or may_have_run(root) for root in roots)
    known = load_states(r, [root["scan_id"] for root in roots]) if again else [None] * len(roots)
    stored = finished_already([root["scan_id"] for root in roots], careful=again)
    waves = []
    for root, existing in zip(roots, known):
        if existing is not None or root["scan_id"] in stored:
            continue
        scan = ScanState(root["scan_id"], root["date"], root["source"], profile_id, notify, eng.limits,
                         Budget(eng.limits))
        path = (root.get("source") or {}).get("path")
        waves.append((scan, [Pending(None, root["filename"], sha256=root["sha256"], known_size=root["size"],
                                     at=root.get("at"), source_path=path if isinstance(path, str) else None)]))
    try:
        with r.pipeline() as pipe:
            settle(app, r, waves, [], pipe)
    except (ArchiveError, OSError) as exc:  # the roots cannot be read here: say so, never leave the client waiting
        refuse(r, [root for root, existing in zip(roots, known) if existing is None], [notify, verdicts],
               f"cannot read the submitted files from this worker's archive ({type(exc).__name__}: {exc}); "
               f"do the client and the workers share it (STOQ_ARCHIVER, STOQ_ARCHIVE)?")
    else:
        if verdicts:  # every root of the batch: a redelivery's earlier delivery may have died before this
            tell(r, verdicts, [dumps({"accepted": [root["scan_id"] for root in roots]})])
    forget(r, blob_keys(sent))


def finished_already(scan_ids: list[str], careful: bool = False) -> set[str]:
    """Those of ``scan_ids`` the ledger holds as finished: a publish that comes after its scan was
    stored (the ledger's, or a client's, sent again while the first was queued; a late first one)
    must not begin it again: a second run's payloads have other ids, and would be stored beside
    the first's. The database away: a ``careful`` publish (one whose scans may have run already:
    redelivered, published again, or submitted ``recover_after`` ago) raises, so that it waits
    for the database (``retrying``; then the ledger publishes it again); any other begins every
    scan (none of them can have been stored)."""
    try:
        return {i for i, state in ledger.states(result_store(), scan_ids).items() if state == ledger.FINISHED}
    except Exception as exc:
        if careful and transient(exc):
            raise
        log.warning("publish: cannot read the ledger (%s: %s); beginning every scan", type(exc).__name__, exc)
        return set()


def may_have_run(root: dict[str, Any]) -> bool:
    """Whether a root was submitted long enough ago (half of ``recover_after``, for clocks that
    differ) for the ledger to have published it again meanwhile: a late first publish."""
    try:
        submitted = datetime.fromisoformat(root["date"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return True
    return time.time() - submitted >= worker_settings().recover_after / 2


def refuse(r: redis.Redis, roots: list[dict[str, Any]], clients: list[str | None], message: str) -> None:
    """Tells the submitting client (its documents' or its verdicts' list) that these scans will not
    run, and logs it with their ids."""
    log.error("refusing scan(s) %s of a submission: %s", ", ".join(root["scan_id"] for root in roots), message)
    entries = [dumps({"scan_id": root["scan_id"], "refused": message}) for root in roots]
    try:  # the ledger says so too (``stoq results ID``), and does not publish them again
        ledger.refuse(result_store(), [root["scan_id"] for root in roots], message)
    except Exception as exc:  # the database away: the ledger republishes them, and they are refused again
        log.warning("cannot record the refusal in the ledger (%s: %s)", type(exc).__name__, exc)
    for key in clients:
        if key and entries:
            tell(r, key, entries)


class Beginning(Activity):
    """The guard's page while a payload is begun: ``libmagic`` while libmagic types it, then
    ``dispatch`` (``DISPATCH``) until the plan is made, so a death is charged to the step and content
    it happened in. Reading and hashing the payload, before, are nobody's fault (an archive that
    answers slowly is not the content's doing)."""

    def __init__(self, guard: gd.Guard, sha256: str) -> None:
        self.guard, self.sha256 = guard, sha256

    def enter(self, plugin: str, sha256: str) -> None:
        self.guard.enter(plugin, sha256)

    def leave(self) -> None:
        self.guard.enter(DISPATCH, self.sha256)


def begin_verdicts(r: redis.Redis, sha256s: list[str]) -> dict[str, str]:
    """sha256 -> quarantine message, for the payloads that took a worker down while being begun
    (typed or dispatched) ``quarantine_after`` times: one round trip per step."""
    limit = worker_settings().quarantine_after
    found: dict[str, str] = {}
    for step in BEGIN_STEPS:
        for sha256, (_kind, message) in gd.verdicts(r, step, sha256s, limit).items():
            found.setdefault(sha256, message)
    return found


def begin_waves(r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]],
                wave_id: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Begins each scan's next wave (token ``wave_id``, pending records); returns the plugin work:
    (profile, plugin) -> references, in wave order. Each payload is begun under the guard (its hard
    time limit, and blame by content); one quarantined there is begun without libmagic and dispatch
    rules, with an error entry that says why."""
    parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
    guard = gd.process_guard(r)
    quarantined = begin_verdicts(r, [item.sha256 for _, items in waves for item in items if item.sha256])
    for scan, items in waves:
        eng = engine_for(r, scan.profile)
        guard.timeout_for = eng.timeout_for
        scan.wave, scan.pending = wave_id, []
        left, shape = scan.budget.left(), (len(items), sum(item.size for item in items))  # as embedded (Engine.begin)
        for item in items:
            sha256 = item.sha256 or ""
            try:
                started = eng.begin(item, scan.budget, activity=Beginning(guard, sha256),
                                    quarantined=quarantined.get(sha256), left=left, wave=shape)
            finally:
                guard.leave()
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


def settle(app: Celery, r: redis.Redis, waves: list[tuple[ScanState, list[Pending]]],
           finished: list[ScanState], pipe: Any, settled: str | None = None) -> None:
    """Begins the next waves; saves the finished scans; then, in one transaction in ``pipe`` (a
    watched pipeline or a plain one), writes every state and the next wave, hands the stored
    documents to their clients and deletes the ``settled`` wave; then sends the next plugin tasks.

    The finished scans are saved first, here (the collector is the last task of a scan: no hop to a
    store task). Should this process die before the transaction, the task is redelivered and does
    it all again (the save is idempotent). Should the save fail (the database is away), the scans
    are committed as finished and handed to the ``stoq.connector.store`` task, which retries."""
    wave_id = new_id()
    parts = begin_waves(r, waves, wave_id)
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
        pipe.delete(wave_key(settled))
    pipe.execute()
    # Committed: the task must not fail now on a broker hiccup, for its next run (a retry, a
    # redelivery) finds this wave settled and would send nothing; so the sends retry on their own.
    retrying("sending the next wave", wave.send, app)
    if docs is None:
        retrying("sending to the store", send_store, app, [s.scan_id for s in finished])
    elif finished:
        send_connectors(app, r, finished)


# -- 2. the plugin tasks -----------------------------------------------------------------------------------

def run_part(app: Celery, plugin: str, task_id: str | None, again: bool, profile_id: str, wave_id: str,
             part: int, parts: int) -> None:
    """Runs ``plugin`` on each payload of the wave's ``part``; records one answer per reference, in
    order; sends the collector when this part completes the wave. A payload quarantined for this
    plugin (``guard.verdicts``) is answered with its error; a redelivered part reuses the answers its
    earlier delivery recorded (``TaskRecord``)."""
    r = redis_client(app)
    raw = r.hget(wave_key(wave_id), part_field(part))
    if raw is None:  # a redelivery, or a duplicate, after the wave was settled: done already
        log.warning("%s: wave %s is settled already (or expired); nothing to do", plugin, wave_id)
        return
    refs = orjson.loads(raw)  # type: ignore[arg-type]
    eng = engine_for(r, profile_id)
    g = gd.process_guard(r)
    g.timeout_for = eng.timeout_for
    blamed = gd.verdicts(r, plugin, (ref["sha256"] for ref in refs), worker_settings().quarantine_after,
                         eng.timeout_for(plugin))
    rerun = task_record(r, task_id, again)
    if rerun is None and not blamed:
        answers = [eng.run_on(plugin, ref, g) for ref in refs]
    else:
        answers = run_carefully(rerun, blamed, eng, plugin, refs, g)
    eng.archive.flush()  # the children's index rows, once per batch, before anyone reads the answers
    if put_answer(r, wave_id, part, parts, orjson.dumps(answers)):
        app.send_task("stoq.collect", args=(wave_id,), queue=COLLECT_QUEUE, argsrepr=f"(wave {wave_id})",
                      kwargsrepr="")


def run_carefully(rerun: TaskRecord | None, blamed: dict[str, tuple[str, str]], eng: Engine, plugin: str,
                  refs: list[dict[str, Any]], g: gd.Guard) -> list[dict[str, Any]]:
    """A part with quarantined payloads, or a redelivered one (see ``run_part``)."""
    answers = []
    for ref in refs:
        pid = ref["payload_id"]
        recorded = rerun.answer(pid) if rerun is not None else None
        if recorded is not None:
            answers.append(orjson.loads(recorded))
            continue
        if ref["sha256"] in blamed:
            kind, message = blamed[ref["sha256"]]
            answers.append({"payload_id": pid, "error": {"payload_id": pid, "plugin": plugin, "kind": kind,
                                                         "message": message}})
            continue
        answer = eng.run_on(plugin, ref, g)
        if rerun is not None:
            rerun.record(pid, orjson.dumps(answer))
        answers.append(answer)
    return answers


# -- 3. collect ---------------------------------------------------------------------------------------------

def collect(app: Celery, wave_id: str, task_id: str | None = None, redelivered: bool = False) -> None:
    """Sent by the plugin task that completed a wave: applies the wave's answers, then settles its
    scans (next wave, or done and stored) and deletes the wave. (``task_id`` and ``redelivered`` are
    the task's; a redelivery does the same, guarded by the wave tokens.)"""
    r = redis_client(app)
    fields: dict[bytes, bytes] = r.hgetall(wave_key(wave_id))  # type: ignore[assignment]
    if b"batch" not in fields:  # a redelivery, or a duplicate, after the wave was settled: done already
        log.warning("collect: wave %s is settled already (or expired); nothing to do", wave_id)
        return
    batch = orjson.loads(fields[b"batch"])
    answers = wave_answers(fields, batch["parts"])  # a part missing: errors in absorb_wave
    tokens = dict(batch["scans"])
    keys = [scan_key(s) for s in tokens]
    if not keys:
        forget(r, [wave_key(wave_id)])
        return
    for _attempt in range(20):
        with r.pipeline() as pipe:
            try:
                pipe.watch(*keys)
                scans = [s for s in load_states(pipe, list(tokens))
                         if s is not None and s.wave == tokens[s.scan_id] and not s.done]
                waves, finished = [], []
                for scan in scans:
                    children = absorb_wave(r, scan, answers)
                    if children:
                        waves.append((scan, children))
                    else:
                        finished.append(scan)
                settle(app, r, waves, finished, pipe, settled=wave_id)
                return
            except redis.WatchError:
                continue  # the sweeper touched one of these scans: read them again
    raise RuntimeError(f"could not commit scans {list(tokens)}: they kept changing")


def absorb_wave(r: redis.Redis, scan: ScanState, answers: Answers) -> list[Pending]:
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


# -- 4. store, then the connectors ---------------------------------------------------------------------------

def document_of(scan: ScanState) -> dict[str, Any]:
    return assemble(scan.scan_id, scan.date, scan.source, scan.results, scan.errors)


def save_documents(scans: list[ScanState]) -> list[dict[str, Any]]:
    """Saves finished scans' documents in one transaction (idempotent: a redelivery changes nothing)."""
    docs = [document_of(s) for s in scans]
    result_store().save(docs)
    return docs


def send_store(app: Celery, scan_ids: list[str]) -> None:
    if scan_ids:
        app.send_task("stoq.connector.store", args=(scan_ids,), queue=COLLECT_QUEUE,
                      argsrepr=describe_ids("scans", scan_ids), kwargsrepr="")


def store(app: Celery, scan_ids: list[str]) -> None:
    """The store connector task (when the collector could not save, and for the sweeper): saves
    finished scans in one transaction, hands each document to the ``stoq submit`` waiting for it,
    forgets the scans' states, then sends the other configured connectors."""
    r = redis_client(app)
    scans = [s for s in load_states(r, scan_ids) if s is not None and s.done]
    if not scans:
        return
    docs = save_documents(scans)  # idempotent: a redelivered connector changes nothing
    with r.pipeline(transaction=False) as pipe:
        forget_stored(pipe, scans, docs)
        pipe.execute()
    send_connectors(app, r, scans)


def send_connectors(app: Celery, r: redis.Redis, scans: list[ScanState]) -> None:
    """The chain goes on: each configured connector, with the stored scans of each submission profile."""
    by_profile: dict[str, list[str]] = {}
    for scan in scans:
        by_profile.setdefault(scan.profile, []).append(scan.scan_id)
    for profile_id, ids in by_profile.items():
        for name in get_profile(r, profile_id).get("connectors") or []:
            app.send_task(f"stoq.connector.{name}", args=(profile_id, ids), queue=name,
                          argsrepr=describe_ids("scans", ids), kwargsrepr="")


def catch_up_connectors() -> None:
    """The workers' catch-up of the connector outbox (``stoq.outbox.catch_up``), with this worker's
    settings (they hold the connectors' secret options)."""
    from stoq.outbox import catch_up

    result = catch_up(result_store(), worker_settings())
    for name, n in result.delivered.items():
        log.warning("connector %r: %d document(s) delivered from the outbox", name, n)
    for message in result.errors:
        log.error("%s; still kept in the outbox", message)
