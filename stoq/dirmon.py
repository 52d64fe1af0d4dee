"""``stoq dirmon``: watch directories and submit each new or replaced file once it is completely written,
exactly once across restarts and crashes (docs/sources/dirmon.md).

Three parts, one way:

* **Watcher** (watchdog's thread): inotify by default (``--polling``: watchdog's polling observer, for
  network filesystems). Its handler only classifies an event and puts ``(kind, path)`` on a bounded
  queue; when the queue is full, or the kernel says events were lost, it sets a flag that makes the
  main loop scan the tree again instead. So memory is bounded and no file is missed: events are hints,
  the ledger and the tree are the truth.
* **Tracker** (main thread): the files seen and not yet submitted, with their size and mtime. A file
  is *ready* on inotify's close-write (``FileClosedEvent``) or a rename into place; otherwise (polling,
  a file found by a scan of the tree, a file created and not yet closed) when its size and mtime have
  not changed for ``settle`` seconds. On inotify a file once modified waits for its close-write, so a
  file written slowly, with pauses, is never submitted half-way.
* **Submitter**: a batch of ready files is hashed, recorded ``pending`` in the ledger
  (``stoq.dirmon_ledger``) with a scan id each, then scanned embedded (``stoq.embedded`` pool; the documents
  are stored, then the rows marked ``stored``) or published to the cluster (``stoq.tasks.client``;
  rows ``submitted``, then ``stored`` when the store has the document). At start, rows left
  ``pending`` are sent again under their scan ids, and the tree is scanned for files that appeared
  while dirmon was down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

from stoq.config import Settings
from stoq.filters import FileFilter
from stoq.dirmon_ledger import Entry, Ledger
from stoq.model import new_id, text
from stoq.submission import Root

log = logging.getLogger(__name__)

CLOSED, MOVED, CREATED, MODIFIED, DELETED, SEEN = "closed", "moved", "created", "modified", "deleted", "seen"


@dataclass
class DirmonOptions:
    """How dirmon watches and submits (the command's options)."""

    polling: bool = False
    poll_interval: float = 2.0  # seconds between two looks of the polling observer
    settle: float = 2.0  # seconds a file's size and mtime must stay unchanged, where no close-write says it is done
    batch: int = 256  # files per submission
    queue_max: int = 4096  # events between watchdog's thread and the submitter
    track_max: int = 20_000  # files waiting to be ready, at most; beyond, the tree scan waits
    rescan_every: float = 600.0  # seconds between scans of the tree (0: only at start and when events are lost)
    move_to: Path | None = None
    delete: bool = False
    report_every: float = 10.0


# ------------------------------------------------------------------------------------------- watcher

class Watcher:
    """watchdog's observer and its handler, feeding ``events`` (bounded); ``lost`` is set when an event
    could not be queued or the kernel dropped some: the tree must be scanned again."""

    def __init__(self, dirs: list[Path], options: DirmonOptions) -> None:
        from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                                     FileDeletedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEventHandler)

        self.events: queue.Queue[tuple[str, str]] = queue.Queue(options.queue_max)
        self.lost = threading.Event()
        kinds = {FileClosedEvent: CLOSED, FileCreatedEvent: CREATED, FileModifiedEvent: MODIFIED,
                 FileDeletedEvent: DELETED}
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                cls = type(event)
                if cls is FileMovedEvent:
                    items = [(DELETED, event.src_path)] if event.src_path else []
                    items += [(MOVED, event.dest_path)] if event.dest_path else []
                elif cls in kinds:
                    items = [(kinds[cls], event.src_path)]
                elif cls in (DirCreatedEvent, DirMovedEvent) or event.event_type == "lost":
                    watcher.lost.set()  # a directory appeared whole (or events were lost): scan it
                    return
                else:
                    return
                for item in items:
                    try:
                        watcher.events.put_nowait((item[0], os.fsdecode(item[1])))
                    except queue.Full:
                        watcher.lost.set()

        if options.polling:
            from watchdog.observers.polling import PollingObserver

            self.observer: Any = PollingObserver(timeout=options.poll_interval)
            wanted = None
        else:
            from watchdog.events import EventsLostEvent  # noqa: F401  (queued whatever the filter)
            from watchdog.observers.inotify import InotifyObserver

            self.observer = InotifyObserver(generate_full_events=True)
            wanted = [FileClosedEvent, FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent,
                      DirCreatedEvent, DirMovedEvent]
        for top in dirs:
            self.observer.schedule(Handler(), str(top.absolute()), recursive=True, event_filter=wanted)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=10)


# ------------------------------------------------------------------------------------------- tracker

@dataclass(slots=True)
class Watched:
    size: int
    mtime_ns: int
    since: float  # when size and mtime were last seen to change
    needs_close: bool  # inotify: modified since created, so only its close-write says it is done
    ready: bool = False


class Tracker:
    """Files seen and not yet submitted (see the module docstring for when one is ready)."""

    def __init__(self, options: DirmonOptions) -> None:
        self.options = options
        self.files: dict[str, Watched] = {}

    def __len__(self) -> int:
        return len(self.files)

    def see(self, kind: str, path: str, now: float) -> None:
        if kind == DELETED:
            self.files.pop(path, None)
            return
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            self.files.pop(path, None)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        old = self.files.get(path)
        polling = self.options.polling
        if old is None or (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns):
            needs_close = not polling and (kind == MODIFIED or (kind == CREATED and st.st_size == 0)
                                           or (old is not None and old.needs_close))
            old = self.files[path] = Watched(st.st_size, st.st_mtime_ns, now, needs_close)
        if kind == MODIFIED and not polling:
            old.needs_close = True
        if kind in (CLOSED, MOVED):
            old.ready = True

    def take_ready(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` ready files, removed from the tracker. Files waiting for stability are
        looked at again (one ``stat`` each)."""
        out: list[str] = []
        settle = self.options.settle
        for path, w in list(self.files.items()):
            if len(out) >= limit:
                break
            if not w.ready and not w.needs_close and now - w.since >= settle:
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    del self.files[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (w.size, w.mtime_ns):
                    w.size, w.mtime_ns, w.since = st.st_size, st.st_mtime_ns, now
                    continue
                w.ready = True
            if w.ready:
                out.append(path)
                del self.files[path]
        return out


def walk(dirs: list[Path]) -> Iterator[tuple[str, os.stat_result]]:
    """Every regular file under ``dirs`` (symbolic links not followed), with its ``stat``."""
    stack = [str(d) for d in dirs]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as listing:
                entries = list(listing)
        except OSError as exc:
            log.warning("cannot list %s: %s", here, exc)
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield entry.path, entry.stat(follow_symlinks=False)
            except OSError:
                continue


def sha256_of(path: str) -> tuple[str, os.stat_result]:
    """The file's sha256 and its ``stat`` (taken on the open file, so both describe what was read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest(), st


# ----------------------------------------------------------------------------------------- submitters

class EmbeddedSubmitter:
    """Scans roots in this machine's processes (``stoq.embedded``), stores their documents."""

    cluster = False

    def __init__(self, settings: Settings, store: Any) -> None:
        from stoq.connectors import open_connectors
        from stoq.engine import Engine

        self.engine = Engine(settings)
        self.store = store
        self.jobs = settings.resolved_jobs()
        self.connectors = open_connectors(settings, self.engine.registry)

    def submit(self, roots: list[Root]) -> tuple[list[str], dict[str, str]]:
        """(scan ids stored, {scan id: why it failed})."""
        from stoq.connectors import deliver
        from stoq.embedded import EmbeddedPool

        docs: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        by_path = {str(r.path): r.scan_id for r in roots}
        for outcome in EmbeddedPool(self.engine, self.jobs).run(roots):
            if outcome.document is None:
                failed[by_path[str(outcome.path)] or ""] = outcome.error or "not scanned"
            else:
                docs.append(orjson.loads(outcome.document))
        self.store.save(docs)
        for failure in deliver(self.connectors, docs):
            log.warning("%s", failure)
        return [d["scan_id"] for d in docs], failed

    def close(self) -> None:
        self.engine.close()


class ClusterSubmitter:
    """Publishes roots to the cluster (``stoq.tasks.client``); the workers store the documents."""

    cluster = True

    def __init__(self, settings: Settings) -> None:
        from stoq.tasks.client import ClusterClient

        self.client = ClusterClient(settings)

    def submit(self, roots: list[Root]) -> tuple[list[str], dict[str, str]]:
        """(scan ids published, {scan id: why not})."""
        sent: list[str] = []
        failed: dict[str, str] = {}
        by_path = {str(r.path): r.scan_id for r in roots}
        for outcome in self.client.submit(roots, None):
            if outcome.scan_id is None:
                failed[by_path[str(outcome.path)] or ""] = outcome.error or "not sent"
            else:
                sent.append(outcome.scan_id)
        return sent, failed

    def in_progress(self, scan_ids: list[str]) -> set[str]:
        """Which of these scans the cluster has begun (their state is in Redis)."""
        from stoq.tasks import state as st

        r = self.client.r
        return {i for i, there in zip(scan_ids, r.mget([st.scan_key(i) for i in scan_ids])) if there is not None} \
            if scan_ids else set()

    def close(self) -> None:
        self.client.close()


# ---------------------------------------------------------------------------------------------- loop

@dataclass
class Counts:
    submitted: int = 0
    stored: int = 0
    unchanged: int = 0
    filtered: int = 0
    failed: int = 0
    resubmitted: int = 0
    moved: int = 0
    deleted: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def line(self, waiting: int) -> str:
        return (f"dirmon: {self.submitted} submitted, {self.stored} stored, {self.unchanged} unchanged, "
                f"{self.filtered} filtered out, {self.failed} failed, {waiting} waiting"
                + (f", {self.moved} moved" if self.moved else "") + (f", {self.deleted} deleted" if self.deleted else ""))


class Dirmon:
    """The monitor: see the module docstring. ``run`` returns when ``stop`` is set."""

    def __init__(self, dirs: list[Path], options: DirmonOptions, ledger: Ledger, submitter: Any,
                 meta: dict[str, str], filters: FileFilter, report: Callable[[str], None]) -> None:
        self.dirs = [d.absolute() for d in dirs]
        self.options = options
        self.ledger = ledger
        self.submitter = submitter
        self.meta = meta
        self.filters = filters
        self.report = report
        self.tracker = Tracker(options)
        self.counts = Counts()
        self._scan: Iterator[tuple[str, os.stat_result]] | None = None

    def _root_of(self, path: str) -> Path:
        return next((d for d in self.dirs if path.startswith(str(d) + os.sep)), self.dirs[0])

    # -- start

    def recover(self) -> None:
        """Rows left ``pending`` by a run that ended before they were settled: stored ones are marked;
        the others sent again under their scan ids (a cluster scan already begun is left alone)."""
        after = 0
        while rows := self.ledger.in_state("pending", self.options.batch, after):
            after = rows[-1][0]
            entries = [e for _, e in rows]
            stored = self.ledger.stored([e.scan_id for e in entries])
            self._settle_stored([e for e in entries if e.scan_id in stored])
            rest = [e for e in entries if e.scan_id not in stored]
            if self.submitter.cluster and rest:
                begun = self.submitter.in_progress([e.scan_id for e in rest])
                self.ledger.mark(sorted(begun), "submitted")
                rest = [e for e in rest if e.scan_id not in begun]
            again: list[Entry] = []
            for e in rest:
                try:
                    sha256, _ = sha256_of(e.path)
                except OSError as exc:
                    self.ledger.mark([e.scan_id], "failed", f"gone before it was submitted: {exc.strerror or exc}")
                    continue
                if sha256 != e.sha256:
                    self.ledger.mark([e.scan_id], "failed", "changed before it was submitted")
                    self.tracker.see(SEEN, e.path, time.monotonic())  # its new content, as any change
                    continue
                again.append(e)
            if again:
                self.counts.resubmitted += len(again)
                self.report(f"dirmon: submitting again {len(again)} file(s) left pending by the last run")
                self._submit(again)

    # -- the loop

    def run(self, stop: threading.Event, watcher: Watcher) -> None:
        self.recover()
        self._scan = walk(self.dirs)  # files that appeared while dirmon was down (the watch is already on)
        last_rescan = last_report = last_check = time.monotonic()
        reported = None
        while not stop.is_set():
            now = time.monotonic()
            drained = self._drain(watcher, now)
            if watcher.lost.is_set() and self._scan is None:
                watcher.lost.clear()
                self.report("dirmon: events were lost (a burst, or a directory moved in): scanning the tree")
                self._scan, last_rescan = walk(self.dirs), now
            if self.options.rescan_every and now - last_rescan >= self.options.rescan_every and self._scan is None:
                self._scan, last_rescan = walk(self.dirs), now
            if self._scan is not None:
                self._advance_scan(now)
            ready = self.tracker.take_ready(now, self.options.batch)
            if ready:
                self._handle(ready)
            if self.submitter.cluster and now - last_check >= 1.0:
                self._check_submitted()
                last_check = now
            if now - last_report >= self.options.report_every:
                line = self.counts.line(len(self.tracker))
                if line != reported:
                    self.report(line)
                    reported = line
                last_report = now
            if not ready and not drained and self._scan is None:
                try:  # idle: wait for the next event
                    kind, path = watcher.events.get(timeout=0.2)
                    self.tracker.see(kind, path, time.monotonic())
                except queue.Empty:
                    pass
        self.report(self.counts.line(len(self.tracker)) + " (stopping)")

    def _drain(self, watcher: Watcher, now: float) -> int:
        n = 0
        while n < 10_000:
            try:
                kind, path = watcher.events.get_nowait()
            except queue.Empty:
                break
            n += 1
            if len(self.tracker) >= self.options.track_max and path not in self.tracker.files:
                watcher.lost.set()  # no room: the next scan of the tree finds it
                continue
            self.tracker.see(kind, path, now)
        return n

    def _advance_scan(self, now: float) -> None:
        """Takes the next few hundred files of the tree scan: new or changed ones go to the tracker."""
        assert self._scan is not None
        room = self.options.track_max - len(self.tracker)
        if room <= 0:
            return
        found: list[tuple[str, os.stat_result]] = []
        for item in self._scan:
            found.append(item)
            if len(found) >= min(500, room):
                break
        else:
            self._scan = None
        latest = self.ledger.latest([p for p, _ in found])
        for path, st in found:
            entry = latest.get(path)
            if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns):
                continue  # submitted before as it is now
            watched = self.tracker.files.get(path)
            if watched is None:
                self.tracker.see(SEEN, path, now)
            elif watched.needs_close and not watched.ready:
                # Its close-write may be among the events lost: from now on its size and mtime decide
                # (a later write marks it again; docs/sources/dirmon.md, "limits").
                watched.needs_close, watched.since = False, now

    def _handle(self, paths: list[str]) -> None:
        """Hashes ready files, records them ``pending``, submits them."""
        candidates: list[Entry] = []
        for path in paths:
            if self.options.move_to is not None and path.startswith(str(self.options.move_to) + os.sep):
                continue
            try:
                st = os.stat(path, follow_symlinks=False)
                if self.filters.active and not self.filters.keep(path, st, os.path.relpath(path, self._root_of(path))):
                    self.counts.filtered += 1
                    continue
                sha256, st = sha256_of(path)
            except OSError:
                continue  # gone meanwhile
            candidates.append(Entry(path, sha256, st.st_size, st.st_mtime_ns, new_id(), "pending"))
        known = self.ledger.known([(e.path, e.sha256) for e in candidates])
        self.counts.unchanged += sum((e.path, e.sha256) in known for e in candidates)
        fresh = self.ledger.add_pending([e for e in candidates if (e.path, e.sha256) not in known])
        self._submit(fresh)

    def _submit(self, entries: list[Entry]) -> None:
        if not entries:
            return
        by_id = {e.scan_id: e for e in entries}
        done, failed = self.submitter.submit([Root(Path(e.path), e.scan_id, self.meta) for e in entries])
        self.counts.submitted += len(done)
        for scan_id, why in failed.items():
            log.info("not submitted: %s", why)
            self.report(f"dirmon: {text(why)}")
        self.ledger.mark(list(failed), "failed", "; ".join(sorted(set(failed.values())))[:1000] if failed else None)
        self.counts.failed += len(failed)
        if self.submitter.cluster:
            self.ledger.mark(done, "submitted")
        else:
            self._settle_stored([by_id[i] for i in done if i in by_id])

    def _check_submitted(self) -> None:
        """Submitted rows whose document the store now holds become ``stored``."""
        after = 0
        while rows := self.ledger.in_state("submitted", 2000, after):
            after = rows[-1][0]
            entries = [e for _, e in rows]
            stored = self.ledger.stored([e.scan_id for e in entries])
            self._settle_stored([e for e in entries if e.scan_id in stored])
            if len(rows) < 2000:
                break

    def _settle_stored(self, entries: list[Entry]) -> None:
        """Marks rows ``stored``, then moves or deletes their files (only a file still as it was read)."""
        if not entries:
            return
        self.ledger.mark([e.scan_id for e in entries], "stored")
        self.counts.stored += len(entries)
        if self.options.move_to is None and not self.options.delete:
            return
        for e in entries:
            try:
                st = os.stat(e.path, follow_symlinks=False)
            except OSError:
                continue
            if (st.st_size, st.st_mtime_ns) != (e.size, e.mtime_ns):
                continue  # replaced since: the new content is another submission
            try:
                if self.options.delete:
                    os.unlink(e.path)
                    self.counts.deleted += 1
                else:
                    assert self.options.move_to is not None
                    self._move(e.path)
                    self.counts.moved += 1
            except OSError as exc:
                self.report(f"dirmon: cannot {'delete' if self.options.delete else 'move'} {text(e.path)}: "
                            f"{exc.strerror or exc}")

    def _move(self, path: str) -> None:
        assert self.options.move_to is not None
        rel = os.path.relpath(path, self._root_of(path))
        dest = self.options.move_to / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():
            dest = dest.with_name(f"{Path(rel).name}.{n}")
            n += 1
        shutil.move(path, dest)
