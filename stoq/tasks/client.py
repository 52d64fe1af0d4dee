"""``stoq submit`` against a cluster: archive each file, publish references, wait for the documents.

The client writes each file into the shared archive (the workers read it from there: messages carry
references), stores the submission's profile (workers, plugin options, limits) once in Redis, and
sends ``stoq.publish`` tasks of root references. A batch grows with what is left to send (up to
``batch_max``) and is a single file when only one is left, so one file starts at once and a directory
travels in few messages. Waiting, it pops finished documents from its own notification list, which
the store connector fills after the database commit.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import magic
import orjson
import redis

from stoq.archive import HOLD_BYTES, ArchiveError, open_configured, put_many_where, read_input
from stoq.config import Settings
from stoq.engine import oversized_record
from stoq.ledger_writer import FAILED, FINISHED, PENDING, LedgerWriter
from stoq.model import assemble, new_id, now_iso, text
from stoq.rows import StoreError
from stoq.submission import Root, roots_of, source_of
from stoq.tasks import state as st
from stoq.tasks.config import COLLECT_QUEUE, DEFAULT_QUEUE, make_app


#: Seconds between two looks at the ledger of a client that lost Redis.
LEDGER_POLL = 1.0
#: Seconds without a finished scan before ``documents`` says on stderr what it is waiting for.
QUIET_HINT = 60.0
#: Seconds without an entry before the client looks for itself whether the scans it waits for moved
#: on: a publisher or collector killed after its commit and before it told the client leaves the
#: client nothing to pop (the scans go on: the sweeper, the ledger), so it reads their state instead.
RECHECK = 5.0


def batch_size(left: int, batch_max: int) -> int:
    """References per publish task: half of what is left, at least 1, at most ``batch_max``."""
    return max(1, min(batch_max, left // 2))


class Submitted:
    """One input of a submission: its scan id, or why it could not be sent."""

    def __init__(self, path: Path, scan_id: str | None, error: str | None = None) -> None:
        self.path, self.scan_id, self.error = path, scan_id, error


class ClusterClient:
    """Submits files to the cluster named by ``settings.broker_url`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.app = app = make_app("stoq-client")  # sends by name: no plugin needs importing here
        app.conf.update({"broker_url": settings.broker_url}  # the command's settings name the cluster
                        | ({"result_backend": settings.result_backend} if settings.result_backend else {}))
        self.settings = settings
        self.r = st.connect(str(app.conf.result_backend))
        self.r.ping()
        with app.connection_for_write() as conn:  # fail now, not in the middle of a directory
            conn.ensure_connection(max_retries=1, timeout=5)
        self.archive = open_configured(settings)
        self.archive.prepare()
        self.profile_doc = st.profile_of(settings)
        self.profile = st.put_profile(self.r, self.profile_doc)
        self.ledger_writer = LedgerWriter(settings.resolved_database_url())  # the ledger (stoq.ledger)
        self._notify: str | None = None
        self._magic: magic.Magic | None = None  # only an oversized input is typed here
        self._verdicts: str | None = None

    def submit(self, files: list[Path] | list[Root], notify: str | None, verdicts: str | None = None,
               meta: dict[str, str] | None = None) -> Iterator[Submitted]:
        """Archives and publishes every file; yields each one's scan id (or error) as it is sent, in
        input order. Files are read one by one and archived a batch at a time (one index query for
        the batch); a batch is also cut once it holds ``HOLD_BYTES`` of file data. ``notify``: where
        the documents go (``documents``); ``verdicts``: where the publishers say they accepted or
        refused each scan (``verdicts``). A name that is not valid UTF-8 is sent under the text rule
        (``stoq.model.text``), as ``stoq scan`` records it. ``meta``: the submission's metadata
        (``source["meta"]``); a ``Root`` brings its own, and its scan id."""
        self._verdicts = verdicts
        batch: list[tuple[Path, dict[str, Any], bytes]] = []  # read, not yet archived
        held = 0
        left = len(files)
        for root_in in roots_of(files, meta):
            path = root_in.path
            left -= 1
            scan_id = root_in.scan_id or new_id()
            try:
                data = read_input(path, self.settings.max_file_bytes)
            except OSError as exc:
                yield Submitted(path, None, f"{path}: {exc.strerror or exc}")
                continue
            if data is None:  # oversized
                yield from self._send(batch, notify)  # the files before it go first: input order
                batch, held = [], 0
                try:
                    self._oversized(path, scan_id, notify, root_in.meta, root_in.shown)
                except OSError as exc:
                    yield Submitted(path, None, f"{path}: {exc.strerror or exc}")
                    continue
                except StoreError as exc:
                    yield Submitted(path, None, f"{path}: {exc}")
                    continue
                yield Submitted(path, scan_id)
                continue
            batch.append((path, {"scan_id": scan_id, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                 "filename": text(os.path.basename(root_in.shown or path)),
                                 "source": source_of(text(root_in.shown or str(path)), root_in.meta),
                                 "date": now_iso()}, data))
            held += len(data)
            if len(batch) >= batch_size(left + len(batch), self.settings.batch_max) or held >= HOLD_BYTES:
                yield from self._send(batch, notify)
                batch, held = [], 0
        yield from self._send(batch, notify)

    def _send(self, batch: list[tuple[Path, dict[str, Any], bytes]], notify: str | None) -> Iterator[Submitted]:
        """Archives a batch of read files, then publishes their root references."""
        if not batch:
            return
        try:
            places = put_many_where(self.archive, [(root["sha256"], data) for _, root, data in batch])
        except (OSError, ArchiveError, sqlite3.Error) as exc:
            for path, _, _ in batch:
                yield Submitted(path, None, f"{path}: cannot archive it: {exc}")
            return
        for (_, root, _), at in zip(batch, places):
            root["at"] = at
        try:  # durable before it is acknowledged: a scan the ledger does not hold is not sent
            known = self.ledger_writer.record([root for _, root, _ in batch], self.profile_doc, notify,
                                              self._verdicts)
        except StoreError as exc:
            for path, _, _ in batch:
                yield Submitted(path, None, f"{path}: cannot record it in the ledger: {exc}")
            return
        # A scan id the ledger held already (dirmon after a restart, intake given a message again):
        # finished, it is not sent again; failed, it says why; pending, it is sent again as the
        # ledger's recovery would send it (the publisher skips it if its state shows it in progress).
        send = []
        for _, root, _ in batch:
            row = known.get(root["scan_id"])
            if row is None:
                send.append(root)
            elif row["state"] == PENDING:
                send.append(root | {"attempt": row["attempts"]})
        self._publish(send, notify)
        finished = [root["scan_id"] for _, root, _ in batch
                    if (known.get(root["scan_id"]) or {}).get("state") == FINISHED]
        if finished:
            self._tell(notify, [st.dumps(doc) for doc in map(self.store.get, finished) if doc is not None], finished)
        for path, root, _ in batch:
            row = known.get(root["scan_id"])
            if row is not None and row["state"] == FAILED:
                yield Submitted(path, None, f"{path}: scan {root['scan_id']} failed before: {row['error']}")
            else:
                yield Submitted(path, root["scan_id"])

    def _publish(self, roots: list[dict[str, Any]], notify: str | None) -> None:
        if not roots:
            return
        self.archive.flush()  # the workers must find the index rows before the message
        self.app.send_task("stoq.publish", args=(self.profile, st.wrap(self.r, roots), notify),
                           kwargs={"verdicts": self._verdicts} if self._verdicts else None, queue=DEFAULT_QUEUE,
                           argsrepr=st.describe_batch(self.profile, "roots",
                                                      [f"{root['scan_id']} {root['filename']}" for root in roots]),
                           kwargsrepr="")

    def _oversized(self, path: Path, scan_id: str, notify: str | None, meta: dict[str, str] | None = None,
                   shown: str | None = None) -> None:
        """An input over ``max_file_bytes`` is only hashed and typed, here: recorded in the ledger,
        then its document (the record flagged ``limit:file-bytes``) saved by this client, which
        finishes it in the ledger; a save that fails leaves it failed there, with why."""
        if self._magic is None:
            self._magic = magic.Magic(mime=True)
        record = oversized_record(path, self._magic.from_buffer)
        source = source_of(text(shown or str(path)), meta)
        doc = assemble(scan_id, now_iso(), source, [record.as_dict()], [])
        root = {"scan_id": scan_id, "sha256": record.sha256, "size": record.size, "filename": record.filename,
                "source": source, "date": doc["date"], "at": None, "oversized": True}
        known = self.ledger_writer.record([root], self.profile_doc, notify, self._verdicts)
        if scan_id in known:  # submitted before under this id (a source's restart): as _send
            row = known[scan_id]
            if row["state"] == FAILED:
                raise StoreError(f"scan {scan_id} failed before: {row['error']}")
            stored = self.store.get(scan_id)
            if stored is not None:
                self._tell(notify, [st.dumps(stored)], [scan_id])
                return
        try:
            self.store.save([doc])
        except StoreError as exc:
            from stoq import ledger

            ledger.refuse(self.store, [scan_id], f"over max_file_bytes, and its record could not be saved: {exc}")
            raise
        self._tell(notify, [st.dumps(doc)], [scan_id])
        for name in self.profile_doc.get("connectors") or []:  # as the collector sends them after a save
            self.app.send_task(f"stoq.connector.{name}", args=(self.profile, [scan_id]), queue=name,
                               argsrepr=st.describe_ids("scans", [scan_id]), kwargsrepr="")

    def _tell(self, notify: str | None, docs: list[bytes], scan_ids: list[str]) -> None:
        """Scans stored without a publish (an oversized input; one stored before): the waiting
        client gets their documents, a ``--no-wait`` one their acceptance, as the workers tell them."""
        with self.r.pipeline(transaction=False) as pipe:
            for key, entries in ((notify, docs), (self._verdicts, [st.dumps({"accepted": scan_ids})])):
                if key and entries:
                    pipe.rpush(key, *entries)
                    pipe.expire(key, st.BLOB_TTL)
            pipe.execute()

    def documents(self, notify: str, scan_ids: set[str]) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Finished documents (JSON bytes) as the store connector commits them, each once."""
        waiting = set(scan_ids)
        hint = (f"scan(s); is a worker serving the '{DEFAULT_QUEUE}' and '{COLLECT_QUEUE}' queues and every "
                "plugin queue?")
        for raw in self._entries(notify, waiting, hint, self._ledger_documents, self._ledger_pass):
            doc = orjson.loads(raw)
            if doc["scan_id"] in waiting:  # a redelivered connector may notify twice
                waiting.discard(doc["scan_id"])
                yield doc, raw

    def verdicts(self, key: str, scan_ids: set[str]) -> Iterator[tuple[str, str | None]]:
        """(scan id, None) once a publisher has begun the scan, (scan id, why) if it refused it; each
        scan once. For a client that does not wait for the documents (see ``submit``)."""
        waiting = set(scan_ids)
        hint = f"scan(s) to be accepted; is a worker serving the '{DEFAULT_QUEUE}' queue?"
        for raw in self._entries(key, waiting, hint, self._ledger_verdicts, self._begun):
            entry = orjson.loads(raw)
            verdicts = [(i, None) for i in entry["accepted"]] if "accepted" in entry else [
                (entry["scan_id"], entry["refused"])]
            for scan_id, refused in verdicts:
                if scan_id in waiting:  # a redelivered publisher may answer twice
                    waiting.discard(scan_id)
                    yield scan_id, refused

    def _entries(self, key: str, waiting: set[str], hint: str, fallback: Callable[[set[str]], Iterator[bytes]],
                 recheck: Callable[[set[str]], list[bytes]]) -> Iterator[bytes]:
        """The entries pushed to the list ``key`` while ``waiting`` (which the caller empties) is not
        empty; says on stderr what it waits for after ``QUIET_HINT`` seconds without one. After
        ``RECHECK`` quiet seconds, and each ``RECHECK`` after, the entries ``recheck`` finds for itself
        (those nobody pushed: see ``RECHECK``). Should Redis go away meanwhile, the rest comes from
        the ledger (``fallback``)."""
        last = checked = time.monotonic()
        while waiting:
            try:
                popped = self.r.blpop([key], timeout=1)
            except redis.RedisError as exc:  # Redis restarted, paused or gone: the ledger still knows
                print(f"stoq: lost Redis ({type(exc).__name__}: {exc}); waiting on the ledger for "
                      f"{len(waiting)} scan(s)", file=sys.stderr)
                yield from fallback(waiting)
                return
            if popped is None:
                if time.monotonic() - max(last, checked) > RECHECK:
                    checked = time.monotonic()
                    yield from self._quietly(recheck, waiting)
                    continue
                if time.monotonic() - last > QUIET_HINT:
                    print(f"stoq: still waiting for {len(waiting)} {hint}", file=sys.stderr)
                    last = time.monotonic()
                continue
            last = time.monotonic()
            more: list[bytes] = self.r.lpop(key, 1000) or []  # type: ignore[assignment]  # the rest, one trip
            yield popped[1]  # type: ignore[misc]  # bytes: no decode_responses
            yield from more
        self.r.delete(key)

    def _quietly(self, recheck: Callable[[set[str]], list[bytes]], waiting: set[str]) -> list[bytes]:
        """``recheck(waiting)``; nothing when the database or Redis does not answer (the wait goes on)."""
        try:
            return recheck(set(waiting))
        except Exception:  # a look of our own, on top of the pushed entries: never fatal
            return []

    def _ledger_pass(self, waiting: set[str], accepted: bool = False) -> list[bytes]:
        """One look at the ledger: for each scan of ``waiting`` it holds as finished, its document (or,
        ``accepted``, its acceptance); a refusal with the ledger's why for each it gave up
        (``failed``: the ledger settles every scan after ``max_attempts`` publishes) or never recorded."""
        from stoq import ledger

        found = ledger.states(self.store, sorted(waiting))
        entries = []
        for scan_id in sorted(waiting):
            state = found.get(scan_id)
            if state == ledger.FINISHED and accepted:
                entries.append(orjson.dumps({"accepted": [scan_id]}))
            elif state == ledger.FINISHED:
                doc = self.store.get(scan_id)
                if doc is not None:
                    entries.append(orjson.dumps(doc))
            elif state == ledger.FAILED:
                row = ledger.status(self.store, scan_id) or {}
                entries.append(orjson.dumps({"scan_id": scan_id, "refused": row.get("error") or "failed"}))
            elif state is None:  # never recorded: nothing will come
                entries.append(orjson.dumps({"scan_id": scan_id, "refused": "not in the ledger"}))
        return entries

    def _begun(self, waiting: set[str]) -> list[bytes]:
        """The verdicts of the scans of ``waiting`` that moved on without one: begun (their state is in
        Redis) or finished in the ledger are accepted; given up by the ledger are refused."""
        ids = sorted(waiting)
        with self.r.pipeline(transaction=False) as pipe:
            for scan_id in ids:
                pipe.exists(st.scan_key(scan_id))
            begun = sorted(scan_id for scan_id, n in zip(ids, pipe.execute()) if n)
        rest = waiting - set(begun)
        return ([orjson.dumps({"accepted": begun})] if begun else []) + (self._ledger_pass(rest, accepted=True)
                                                                          if rest else [])

    def _ledger_documents(self, waiting: set[str]) -> Iterator[bytes]:
        """The documents of ``waiting`` as the store saves them (``_ledger_pass``), polled from the
        ledger every ``LEDGER_POLL`` seconds until each is finished or failed."""
        quiet = time.monotonic()
        while waiting:
            try:
                entries = self._ledger_pass(waiting)
            except Exception as exc:  # the database is away too: keep trying, say so now and then
                if time.monotonic() - quiet > QUIET_HINT:
                    print(f"stoq: cannot read the ledger ({type(exc).__name__}); still waiting", file=sys.stderr)
                    quiet = time.monotonic()
                time.sleep(LEDGER_POLL)
                continue
            yield from entries
            if waiting:
                time.sleep(LEDGER_POLL)

    def _ledger_verdicts(self, waiting: set[str]) -> Iterator[bytes]:
        """Without Redis, a recorded scan is as good as accepted: the ledger publishes it again."""
        yield orjson.dumps({"accepted": sorted(waiting)})

    @property
    def store(self) -> Any:
        """The result store (``stoq.store.Store``) holding the ledger, opened on first use."""
        return self.ledger_writer.store

    def close(self) -> None:
        self.ledger_writer.close()
        self.archive.close()
        self.app.close()


def new_notify_key() -> str:
    return f"{st.PREFIX}notify:{new_id()}"


def new_verdicts_key() -> str:
    return f"{st.PREFIX}verdicts:{new_id()}"
