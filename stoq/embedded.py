"""Embedded mode: the engine in a pool of supervised worker processes, no broker, no server.

The parent process hands file paths to ``jobs`` worker processes (forked
from a parent that has already loaded the plugins and compiled the rules), collects their documents
as JSON bytes, stores them in batches and yields them in input order.

Roots are archived by the parent, as the cluster's client archives them: with the pack archive (the
default) the parent reads each file, hashes it with sha256, appends it to its own pack and hands the
worker the sha256 and the file's place in the pack, so that the worker reads it from there (one
``pread``, no ``open``) and writes nothing for it. The supervisor's core is otherwise idle, and the
analysing processes do only analysis. The worker checks that the pack record's header names that
sha256 and does not hash the bytes with sha256 again (``PackArchive.read_record``): the parent
hashed the very bytes it wrote, so a file that changed on disk meanwhile is scanned as it was read,
never under another file's name.

Supervision: each worker publishes what it is running (plugin, payload sha256, start time) in a
small shared-memory slot. A worker that dies (a segfault in a native parser, the OOM killer) or that
overruns its plugin's time limit by more than ``HARD_GRACE`` seconds (stuck in native code, where the
soft limit cannot reach) is killed and replaced; its file is scanned again from the start, with that
plugin on that payload skipped and recorded as a ``crash`` or ``timeout`` error, in that file and in every
later file with the same content (the skip is keyed by sha256 and plugin). A SIGKILL the supervisor did
not send (the OOM killer, an operator) is not taken as the payload's fault at once: the file is scanned
again as it was, and only a second such kill on the same run skips it (``OUTSIDE_FREE``). Each kill adds one
skip, so a file makes progress. A worker that dies outside any plugin gets the file once more. After
``MAX_ATTEMPTS`` deaths, or a second death at the same place, the file gets a minimal document (hashed
by the parent, flagged ``crash:gave-up``) with the last ``crash`` or ``timeout`` error.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import hashlib
import logging
import multiprocessing
import os
import multiprocessing.connection
import selectors
import signal
import struct
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import RawValue
from pathlib import Path
from typing import Any, Callable, Generator, Iterable, Iterator

from stoq import metrics
from stoq.archive import HOLD_BYTES, Archive, ArchiveError, read_input
from stoq.engine import Activity, Engine, SkipMap, describe
from stoq.lifetime import die_with_parent, parent_alive, prepare
from stoq.runner import HARD_GRACE, describe_exception
from stoq.model import PayloadRecord, ScanErrorEntry, document, dumps, new_id, now_iso
from stoq.submission import Root, source_of

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
#: Outside kills (SIGKILL the supervisor did not send: the OOM killer, an operator) of one plugin run on
#: one payload that are retried before they count as that payload's fault.
OUTSIDE_FREE = 1
OUTSIDE_KILL = "worker process killed from outside"
PREFETCH = 64
BATCH = 16  # results per message at most, while more work is queued
BATCH_BYTES = 1 << 20
ADMIT_BYTES = HOLD_BYTES  # roots the parent holds in memory at once while archiving a burst of them
CHECK_EVERY = 0.25  # seconds between checks of the hard time limits
STOP_GRACE = 1.0  # seconds a scan stopped early gives its workers to finish the file in hand
PARENT_CHECK = 1.0  # seconds between a waiting worker's checks that its parent lives
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Slot(ctypes.Structure):
    _fields_ = [("active", ctypes.c_int), ("job", ctypes.c_longlong), ("start", ctypes.c_double),
                ("plugin", ctypes.c_char * 64), ("sha256", ctypes.c_char * 64)]


class SlotActivity(Activity):
    """Publishes the running plugin in shared memory for the supervising parent."""

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot

    def enter(self, plugin: str, sha256: str) -> None:
        slot = self.slot
        slot.active = 0
        slot.plugin = plugin.encode()[:63]
        slot.sha256 = sha256.encode()
        slot.start = time.monotonic()
        slot.active = 1

    def leave(self) -> None:
        self.slot.active = 0


@dataclass(slots=True)
class ScannedFile:
    """One root file's result: its document as JSON bytes, or why it could not be read."""

    path: Path
    document: bytes | None
    error: str | None = None


@dataclass(slots=True)
class _Job:
    index: int
    path: Path
    skip: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    attempts: int = 0
    ref: tuple[str, str, int, int] | None = None  # (sha256, pack, offset, length) once the parent archived it
    scan_id: str | None = None  # chosen by the source (dirmon's ledger), else a new one
    meta: dict[str, str] | None = None  # the submission's metadata: source["meta"]
    shown: str | None = None  # source.path when not the path read (stoq.submission.Root)


_FRAME = struct.Struct("<cQI")  # kind (D: document, E: error), job index, length


def unreadable(path: str | Path, exc: OSError | ArchiveError) -> str:
    """The message of an input that could not be read, in the parent or in a worker."""
    return f"{path}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"


def _scan_one(engine: Engine, path: str, skip: SkipMap, activity: SlotActivity,
              ref: tuple[str, str, int, int] | None = None, scan_id: str | None = None,
              meta: dict[str, str] | None = None, shown: str | None = None) -> tuple[bytes, bytes]:
    """(kind, body) for one file: its document, or why it could not be scanned. ``ref``: where the
    parent archived the file (then read from the pack, not from ``path``); ``scan_id`` and ``meta``:
    the source's (``stoq.submission.Root``)."""
    archived = None
    source = source_of(shown or path, meta)
    try:
        activity.enter("read", "")
        if ref is not None:
            archived = ref[0]
            content = engine.archive.read_record(ref[1:], archived)  # only a locating archive gives refs
        else:
            read = read_input(path, engine.settings.max_file_bytes)
            if read is None:
                return b"D", dumps(engine.scan_oversized(Path(path), source, scan_id))
            content = read
    except (OSError, ArchiveError) as exc:
        return b"E", unreadable(path, exc).encode("utf-8", "backslashreplace")
    finally:
        activity.leave()
    try:
        doc = engine.scan(content, os.path.basename(shown or path), source, skip=skip, activity=activity,
                          archived=archived, scan_id=scan_id)
        return b"D", dumps(doc)
    except Exception as exc:  # a fault of stoq itself, not of a plugin: report it, keep serving
        return b"E", f"{path}: scan failed: {describe_exception(exc)}".encode("utf-8", "backslashreplace")


def _serve(conn: multiprocessing.connection.Connection, engine: Engine, slot: _Slot, stop: Any,
           parent: int) -> None:
    """A worker's loop. Results go back in batches while more work is queued (fewer wake-ups of the
    parent), at once when the queue is empty. It ends when told (None), when ``stop`` is set (the scan
    was stopped early: no new file is begun) and when its parent dies (see ``stoq.lifetime``)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited through the fork
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held by the parent during the fork
    faulthandler.disable()  # a crash is recorded by the parent; no traceback dump on stderr
    engine.worker_started()  # e.g. scratch directories a killed predecessor left
    activity = SlotActivity(slot)
    out: list[bytes] = []
    size = 0
    queued: deque[tuple[int, str, SkipMap, tuple[str, str, int, int] | None, str | None, dict[str, str] | None,
                        str | None]] = deque()
    try:
        while not stop.value:
            if not queued:
                while not conn.poll(PARENT_CHECK):
                    if stop.value or not parent_alive(parent):
                        return
                message = conn.recv()  # a list of jobs, or None: stop
                if message is None:
                    return
                queued.extend(message)
                continue
            index, path, skip, ref, scan_id, meta, shown = queued.popleft()
            slot.job = index
            kind, body = _scan_one(engine, path, skip, activity, ref, scan_id, meta, shown)
            out += (_FRAME.pack(kind, index, len(body)), body)
            size += len(body)
            if len(out) >= 2 * BATCH or size >= BATCH_BYTES or stop.value or not (queued or conn.poll()):
                conn.send_bytes(b"".join(out))
                out, size = [], 0
                if not (queued or conn.poll()):
                    engine.archive.flush()  # idle: make the archive index complete
        if out:  # stopped between two sends
            conn.send_bytes(b"".join(out))
    finally:
        engine.close()


class _Worker:
    """One worker process, the jobs handed to it (in order), and its activity slot."""

    def __init__(self, ctx: Any, engine: Engine, index: int, stop: Any) -> None:
        self.index = index
        self.slot = RawValue(_Slot)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, engine, self.slot, stop, os.getpid()), daemon=True)
        # Held during the fork: an interrupt raised inside the fork's C callbacks would be swallowed
        # ("Exception ignored"), and a pending one reaches the child only once it ignores SIGINT.
        prepare()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child.close()
        self.jobs: deque[_Job] = deque()

    def watch(self, selector: selectors.BaseSelector) -> None:
        selector.register(self.conn, selectors.EVENT_READ, self.index)
        selector.register(self.process.sentinel, selectors.EVENT_READ, self.index)

    def unwatch(self, selector: selectors.BaseSelector) -> None:
        selector.unregister(self.conn)
        selector.unregister(self.process.sentinel)

    def give(self, jobs: list[_Job]) -> None:
        """Sends jobs to the worker, in one message."""
        self.jobs.extend(jobs)
        self.conn.send([(job.index, str(job.path), job.skip, job.ref, job.scan_id, job.meta, job.shown) for job in jobs])

    def take_current(self) -> _Job:
        """Removes and returns the job the worker was on (its slot says which), else the oldest."""
        current = self.slot.job
        for job in self.jobs:
            if job.index == current:
                self.jobs.remove(job)
                return job
        return self.jobs.popleft()

    def running(self) -> tuple[str, str, float] | None:
        slot = self.slot
        if not slot.active:
            return None
        return slot.plugin.decode(), slot.sha256.decode(), slot.start

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        metrics.process_dead(self.process.pid)

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        metrics.process_dead(self.process.pid)


def failed_document(path: Path, kind: str, message: str, scan_id: str | None = None,
                    meta: dict[str, str] | None = None) -> bytes:
    """The document of a file whose scan kept killing its worker (see the module docstring)."""
    try:
        content = path.read_bytes()
    except OSError:
        content = b""
    facts = describe(content, lambda _: "application/octet-stream")
    payload_id = new_id()
    record = PayloadRecord(payload_id=payload_id, parent_id=None, depth=0, filename=path.name, extracted_by=None,
                           meta={}, flags=["crash:gave-up"], **facts)
    error = ScanErrorEntry(payload_id, "stoq", kind, message)
    return dumps(document(scan_id or new_id(), now_iso(), source_of(str(path), meta), [record], [error]))


def ready_fds(events: list[tuple[selectors.SelectorKey, int]]) -> set[Any]:
    return {key.fileobj for key, _ in events}


class EmbeddedPool:
    """Scans files in ``jobs`` supervised processes; yields outcomes in input order.

    A run stopped early (the consumer closes the generator, or an exception such as an interrupt is
    raised in it) stops at once: no worker begins another file, each is given ``STOP_GRACE`` seconds
    to send the file in hand, then killed. The outcomes finished but not yielded are then in
    ``leftover``, so that the caller can store them."""

    def __init__(self, engine: Engine, jobs: int) -> None:
        self.engine = engine
        self.jobs = max(1, jobs)
        self.timeout = engine.settings.timeout
        self._ctx = multiprocessing.get_context("fork")
        self._stop: Any = None
        self.leftover: list[ScannedFile] = []

    def run(self, paths: Iterable[Path | Root], *, started: Callable[[], None] | None = None,
            before_fork: Callable[[], None] | None = None) -> Generator[ScannedFile, None, None]:
        """Yields one outcome per path, in order. ``started`` is called once the workers are forked
        (the parent may start threads then); ``before_fork`` before a dead worker is replaced. A
        ``Root`` brings its scan id and metadata (``stoq.submission``)."""
        todo: deque[_Job] = deque(_Job(i, p) if isinstance(p, Path) else _Job(i, p.path, scan_id=p.scan_id,
                                                                                meta=p.meta or None, shown=p.shown)
                                  for i, p in enumerate(paths))
        total = len(todo)
        self._stop = RawValue(ctypes.c_int, 0)  # shared with the workers, set when the run stops early
        self._blamed: dict[tuple[str, str], tuple[str, str]] = {}  # (sha256, plugin) -> error, every job's skip
        self._outside: dict[tuple[str, str], int] = {}  # outside kills while that (sha256, plugin) ran
        self.leftover = []
        metrics.enabled()  # prometheus-client imported once, here, not again in every forked worker
        gc.freeze()  # what is loaded now is shared with the workers: keep the collector off those pages
        workers = [self._fork(i) for i in range(min(self.jobs, max(1, total)))]
        if started is not None:
            started()
        done: dict[int, ScannedFile] = {}
        next_out = 0
        selector = selectors.DefaultSelector()  # one selector for the run: no per-wake set-up
        for worker in workers:
            worker.watch(selector)
        next_check = time.monotonic() + CHECK_EVERY
        try:
            while next_out < total:
                for worker in workers:  # keep PREFETCH jobs queued at each worker: no idle round trips
                    while len(worker.jobs) < PREFETCH and todo:
                        wanted = PREFETCH - len(worker.jobs)
                        burst = [todo.popleft() for _ in range(min(wanted, len(todo)))]
                        ready = self._admit(burst, done)
                        for job in ready:  # content that killed a worker is skipped in every copy
                            job.skip.update(self._blamed)
                        if ready:
                            worker.give(ready)
                events = selector.select(timeout=CHECK_EVERY)
                woken = {key.data for key, _ in events}
                now = time.monotonic()
                if now >= next_check:  # hard time limits: every worker, a few times a second
                    woken.update(range(len(workers)))
                    next_check = now + CHECK_EVERY
                for i in sorted(woken):
                    worker = workers[i]
                    self._collect(worker, done)
                    if not worker.jobs:
                        if worker.process.sentinel in ready_fds(events) and not worker.process.is_alive():
                            worker.unwatch(selector)  # died idle: replace it, nothing to retry
                            workers[i] = self._fork(i, before_fork)
                            workers[i].watch(selector)
                        continue
                    problem = self._problem(worker)
                    if problem is None:
                        continue
                    worker.unwatch(selector)
                    worker.kill()
                    workers[i] = self._fork(i, before_fork)
                    workers[i].watch(selector)
                    job = worker.take_current()
                    outcome = self._retry(job, problem)
                    todo.extendleft(reversed(worker.jobs))  # the others: never started, or results lost
                    if outcome is not None:
                        done[job.index] = outcome
                    else:
                        todo.appendleft(job)
                while next_out in done:
                    yield done.pop(next_out)
                    next_out += 1
        finally:
            selector.close()
            if next_out < total:
                self._abandon(workers, done)
                self.leftover = [done[i] for i in sorted(done)]
            else:
                for worker in workers:
                    worker.stop()
            try:
                self.engine.archive.close()  # the parent's pack and the index rows of the roots it archived
            except (OSError, ArchiveError, sqlite3.Error) as exc:  # every document is out: say so, do not fail
                log.warning("could not write the archive index of the last roots (%s: %s); "
                            "PackArchive.reindex() recovers it from the packs", type(exc).__name__, exc)

    def _abandon(self, workers: list[_Worker], done: dict[int, ScannedFile]) -> None:
        """Stops a run early: no worker begins another file; what they send within ``STOP_GRACE``
        seconds goes to ``done``; a worker still busy then is killed."""
        self._stop.value = 1
        for worker in workers:
            if not worker.jobs:  # waiting for work (so its pipe is empty): wake it now
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_GRACE
        live = [w for w in workers if w.process.is_alive()]
        with selectors.DefaultSelector() as selector:
            for worker in live:
                worker.watch(selector)
            while live and time.monotonic() < deadline:
                selector.select(timeout=max(0.0, deadline - time.monotonic()))
                for worker in list(live):
                    self._collect(worker, done)
                    if not worker.process.is_alive():
                        self._collect(worker, done)  # what it sent before it ended
                        worker.unwatch(selector)
                        live.remove(worker)
        for worker in workers:
            worker.kill()

    def _fork(self, index: int, before_fork: Callable[[], None] | None = None) -> _Worker:
        """A new worker process. The parent's archive is closed first, so that no open pack or SQLite
        connection of the parent is inherited (SQLite connections must not cross a fork); the next
        root it archives opens a new pack."""
        if before_fork is not None:
            before_fork()
        self.engine.archive.close()
        return _Worker(self._ctx, self.engine, index, self._stop)

    def _admit(self, jobs: list[_Job], done: dict[int, ScannedFile]) -> list[_Job]:
        """Archives root files here, in the parent, when the archive is a pack (see the module
        docstring): reads each one and notes its sha256 and place in ``job.ref``. Returns the jobs to
        hand out; a file that cannot be read gets its outcome in ``done`` instead. An oversized file,
        or one the archive refuses, is left to the worker, which hashes the former in chunks and
        records the latter's archive error in its document."""
        archive = self.engine.archive
        if not archive.locates:
            return jobs
        ready: list[_Job] = []
        read: list[tuple[_Job, str, bytes]] = []
        held = 0
        limit = self.engine.settings.max_file_bytes
        for job in jobs:
            if job.ref is not None:  # archived before (a retry)
                ready.append(job)
                continue
            try:
                content = read_input(job.path, limit)
            except OSError as exc:
                done[job.index] = ScannedFile(job.path, None, unreadable(job.path, exc))
                continue
            ready.append(job)
            if content is None:  # oversized: the worker hashes it in chunks
                continue
            if len(content) <= limit:  # else it grew past the limit while read: the worker's business
                read.append((job, hashlib.sha256(content).hexdigest(), content))
                held += len(content)
                if held >= ADMIT_BYTES:  # a burst of big files is archived as it goes, not held
                    self._archive(archive, read)
                    read, held = [], 0
        self._archive(archive, read)
        return ready

    @staticmethod
    def _archive(archive: Archive, read: list[tuple[_Job, str, bytes]]) -> None:
        """Appends read roots to the parent's pack and notes their places in their jobs. If the
        archive fails, the jobs keep no place: each worker then reads its file, tries to archive it
        itself, and records what fails in its document."""
        try:
            places = archive.put_many_located([(sha256, content) for _, sha256, content in read])
        except (OSError, ArchiveError, sqlite3.Error):
            return
        for (job, sha256, _), where in zip(read, places):
            job.ref = (sha256, *where)

    @staticmethod
    def _collect(worker: _Worker, done: dict[int, ScannedFile]) -> None:
        """Takes every result the worker has sent (even if it died since)."""
        while worker.jobs and worker.conn.poll():
            try:
                data = worker.conn.recv_bytes()
            except (EOFError, OSError):
                return
            view, at = memoryview(data), 0
            while at < len(data):
                kind, index, length = _FRAME.unpack_from(data, at)
                at += _FRAME.size
                body = bytes(view[at:at + length])
                at += length
                job = worker.jobs.popleft()
                assert job.index == index, "results come back in the order the jobs were given"
                done[index] = ScannedFile(job.path, body) if kind == b"D" else ScannedFile(job.path, None, body.decode())

    def _problem(self, worker: _Worker) -> tuple[str, str, str, str] | None:
        """(sha256, plugin, kind, message) if the worker died or overran its hard limit."""
        running = worker.running()
        plugin, sha256 = (running[0], running[1]) if running else ("stoq", "")
        if not worker.process.is_alive():
            worker.process.join()
            code = worker.process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            if code == -signal.SIGKILL:  # never sent by this supervisor before it has decided (below)
                return sha256, plugin, "crash", f"{OUTSIDE_KILL} ({how}) while running {plugin}"
            return sha256, plugin, "crash", f"worker process died ({how}) while running {plugin}"
        if running and time.monotonic() - running[2] > self.engine.timeout_for(plugin) + HARD_GRACE:
            limit = self.engine.timeout_for(plugin)
            return sha256, plugin, "timeout", f"exceeded {limit:g} s in native code; worker process killed"
        return None

    def _retry(self, job: _Job, problem: tuple[str, str, str, str]) -> ScannedFile | None:
        sha256, plugin, kind, message = problem
        job.attempts += 1
        key = (sha256, plugin)  # ("", name) when it died outside a plugin: one more plain attempt
        if kind == "crash" and message.startswith(OUTSIDE_KILL) and sha256:
            self._outside[key] = self._outside.get(key, 0) + 1
            if self._outside[key] <= OUTSIDE_FREE and job.attempts < MAX_ATTEMPTS:
                return None  # an outside kill (the OOM killer's): not the payload's doing until it recurs
        if job.attempts >= MAX_ATTEMPTS or key in job.skip:
            return ScannedFile(job.path, failed_document(job.path, kind, message, job.scan_id, job.meta))
        job.skip[key] = (kind, message)
        if sha256:
            self._blamed[key] = (kind, message)
        return None


def scan_files(engine: Engine, paths: list[Path | Root], jobs: int, **hooks: Callable[[], None] | None) -> Iterator[ScannedFile]:
    """Scans ``paths`` with ``jobs`` worker processes (see ``EmbeddedPool.run`` for the hooks)."""
    return EmbeddedPool(engine, jobs).run(paths, **hooks)

