"""What the REST API and the web pages do, without HTTP: submit files, read a scan's state and
document, its payload tree, search, and a payload's bytes.

Two modes, as the CLI has (docs/web.md):

- **embedded** (no ``broker_url``): a submission is recorded in the ledger as pending, answered with
  its scan ids at once, then scanned in the background by a ``stoq.web.runner`` process: what
  ``stoq scan`` runs, storing into the same result store (SQLite by default). At most ``web_scans``
  submissions are scanned at once; the others wait, pending.
- **cluster** (``broker_url`` set): a submission goes through ``ClusterClient`` (archive, ledger,
  broker), as ``stoq submit --no-wait`` sends it; reads come from the SQL store the workers fill.

Every method is blocking (SQL, processes): the API calls them from its thread pool.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable

import orjson
from sqlalchemy import text as sql

from stoq import ledger
from pydantic import ValidationError

from stoq.config import ConfigError, Settings, did_you_mean, parse_plugin_options, validation_message
from stoq.model import new_id, text
from stoq.search import Query, search
from stoq.store import Store
from stoq.submission import MetaError, Root, check_meta, parse_meta
from stoq.web.auth import iso as _iso

log = logging.getLogger(__name__)

#: ``profile.mode`` of the ledger rows of embedded web submissions (settled by this module, never by
#: the cluster's sweeper, which republishes only what it can find in the archive and Redis).
EMBEDDED = "web-embedded"
#: Longest ``error`` kept from the scanning process's messages.
MAX_ERROR = 2000
COPY_CHUNK = 1 << 20
#: The ``error`` of an embedded scan whose server stopped (or died) before it was stored.
STOPPED = "the server stopped before the scan finished"


class UsageError(ValueError):
    """A submission or query the server cannot take as given (HTTP 400): a bad option, meta, date."""


class Unavailable(RuntimeError):
    """The cluster (broker, Redis) or the archive cannot be reached now (HTTP 503)."""


@dataclass
class Upload:
    """A received file, spooled to ``path``; ``filename`` is the client's name (data, never a path)."""

    filename: str
    path: Path
    sha256: str
    size: int


@dataclass
class Submission:
    """One scan a submission started."""

    scan_id: str
    filename: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "filename": self.filename, "sha256": self.sha256, "size": self.size}


@dataclass
class ScanView:
    """A scan as the API shows it: its ledger state and, once finished, its document."""

    scan_id: str
    state: str  # pending, finished, failed
    document: dict[str, Any] | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "state": self.state, "submitted_at": self.submitted_at,
                "finished_at": self.finished_at, "error": self.error, "document": self.document}


def client_filename(name: str | None) -> str:
    """A client's file name as the document keeps it: its last path component (``/`` or ``\\``), under
    the text rule; ``upload`` when it has none."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].replace("\x00", "")
    return text(base) or "upload"


def spool(stream: BinaryIO, directory: Path, index: int, filename: str | None) -> Upload:
    """Copies an uploaded stream to ``directory/index`` (never a client-chosen name), hashing it."""
    path = directory / str(index)
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as out:
        while chunk := stream.read(COPY_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return Upload(client_filename(filename), path, digest.hexdigest(), size)


class Service:
    """The web front's operations on one result store (and, in cluster mode, one cluster)."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None else Store.open(settings.resolved_database_url())
        self.mode = "cluster" if settings.broker_url else "embedded"
        self._pool = ThreadPoolExecutor(max_workers=settings.web_scans, thread_name_prefix="stoq-web-scan")
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._registry: Any = None
        self._local = threading.local()  # each pool thread's spare scanning process
        self._spares: set[_Runner] = set()
        if self.mode == "embedded":
            self._settle_orphans()

    # ---------------------------------------------------------------------------------------- submit

    def profile(self, workers: str | None = None, options: Iterable[str] = (), max_depth: int | None = None) -> Settings:
        """The server's settings with a submission's ``workers`` and ``-o``-style ``options``; an
        option for a plugin that is not installed, or a bad value, is a ``UsageError``."""
        from stoq.config import absolute
        from stoq.registry import Registry, make_options, path_options

        options = [o for o in options if o]
        try:
            given = parse_plugin_options(options)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if self._registry is None:
            self._registry = Registry.discover()  # the plugins installed when the server started
        registry = self._registry
        for plugin in given:
            if plugin not in registry.entries:
                raise UsageError(f"-o {plugin}...: no plugin {plugin!r} is installed{did_you_mean(plugin, registry.entries)}")
        data = self.settings.model_dump()
        if workers is not None and workers.strip():
            data["workers"] = workers
            names = Settings.model_validate(data).workers
            unknown = [n for n in names if n not in registry.entries]
            if unknown:
                raise UsageError(f"workers: no plugin {unknown[0]!r} is installed"
                                 f"{did_you_mean(unknown[0], registry.entries)}")
        if max_depth is not None:
            data["max_depth"] = max_depth
        plugins = {name: dict(values) for name, values in data["plugins"].items()}
        for name, values in given.items():
            entry = registry.entries[name]
            paths = path_options(entry.cls) if entry.cls is not None else frozenset()
            # a relative path means the server's working directory, wherever the plugin runs
            plugins.setdefault(name, {}).update({k: absolute(v, Path.cwd()) if k in paths else v
                                                 for k, v in values.items()})
            if entry.cls is not None:
                try:  # an unknown option or a bad value: refused now, not found by the scan
                    make_options(entry.cls, plugins[name])
                except ConfigError as exc:
                    raise UsageError(str(exc)) from None
        data["plugins"] = plugins
        try:
            return Settings.model_validate(data)
        except ValidationError as exc:  # a value the setting refuses
            raise UsageError(validation_message(exc, None, Settings.model_fields)) from None

    @staticmethod
    def meta(pairs: Iterable[str] | dict[str, str] | None) -> dict[str, str]:
        """``key=value`` pairs (or a mapping) checked as ``--meta`` checks them."""
        try:
            return check_meta(pairs) if isinstance(pairs, dict) else parse_meta(p for p in (pairs or []) if p)
        except MetaError as exc:
            raise UsageError(str(exc)) from None

    def new_spool(self) -> Path:
        """A private directory for one submission's uploads (removed once they are archived)."""
        return Path(tempfile.mkdtemp(prefix="stoq-web-"))

    def submit(self, uploads: list[Upload], settings: Settings | None = None,
               meta: dict[str, str] | None = None, spool_dir: Path | None = None) -> list[Submission]:
        """Starts one scan per upload; returns at once, the scans pending. ``spool_dir`` (holding the
        uploads) belongs to the service from here on: it is removed when the files are archived."""
        settings = settings or self.settings
        roots = [Root(u.path, new_id(), dict(meta or {}), u.filename) for u in uploads]
        made = [Submission(r.scan_id or "", u.filename, u.sha256, u.size) for r, u in zip(roots, uploads)]
        if self.mode == "cluster":
            try:
                self._submit_cluster(settings, roots, made)
            finally:
                if spool_dir is not None:
                    shutil.rmtree(spool_dir, ignore_errors=True)
            return made
        ledger.record(self.store, [{"scan_id": s.scan_id, "sha256": s.sha256, "filename": s.filename,
                                    "source": {"path": s.filename}} for s in made],
                      {"mode": EMBEDDED, "workers": settings.workers}, None)
        self._pool.submit(self._scan_embedded, settings, roots, spool_dir)
        return made

    def _submit_cluster(self, settings: Settings, roots: list[Root], made: list[Submission]) -> None:
        from stoq.tasks.client import ClusterClient

        try:
            client = ClusterClient(settings)
        except Exception as exc:
            if type(exc).__name__ in ("NotMigrated", "StoreError"):
                raise
            raise Unavailable(f"cannot reach the cluster: {type(exc).__name__}: {exc}") from None
        try:
            for submission, sent in zip(made, client.submit(roots, None)):  # type: ignore[arg-type]
                if sent.scan_id is None:
                    raise Unavailable(f"{submission.filename}: {sent.error}")
        finally:
            client.close()

    def _scan_embedded(self, settings: Settings, roots: list[Root], spool_dir: Path | None) -> None:
        """In a pool thread: one ``stoq.web.runner`` process scans the roots; then the ledger is
        settled (a scan not stored by then failed, with what the process said)."""
        ids = [r.scan_id or "" for r in roots]
        work = spool_dir or Path(tempfile.mkdtemp(prefix="stoq-web-"))
        why = ""
        try:
            if self._closed:
                why = STOPPED
                return
            job = work / "job.json"
            job.write_bytes(orjson.dumps({
                "parent": os.getpid(), "settings": settings.model_dump(mode="json"),
                "roots": [{"path": str(r.path), "scan_id": r.scan_id, "meta": r.meta, "shown": r.shown} for r in roots]}))
            child = self._take_runner()
            with self._lock:
                self._children.add(child.proc)
            try:
                try:
                    child.start(job)
                except OSError:  # the waiting process died meanwhile: a fresh one
                    child.close()
                    child = _Runner.spawn()
                    with self._lock:
                        self._children.add(child.proc)
                    child.start(job)
                if not self._closed:
                    self._local.spare = self._spawn()  # warms up while this scan runs, for the next one
                child.proc.wait()
                said = child.said()
            finally:
                with self._lock:
                    self._children.discard(child.proc)
                child.close()
            shown = {str(r.path): r.shown or "" for r in roots}
            lines = [line for line in said.splitlines() if line.strip() and "document(s) stored" not in line]
            why = "\n".join(lines)
            for path, name in shown.items():
                why = why.replace(path, name)
            if self._closed and child.proc.returncode != 0:
                why = STOPPED
            elif not why:
                why = f"the scanning process ended with exit code {child.proc.returncode}"
        except Exception as exc:  # noqa: BLE001  (whatever it was, the scans must not stay pending)
            log.exception("embedded scan failed")
            why = f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
            try:
                stored = set(self._stored(ids))
                ledger.settle(self.store, sorted(stored), {i: why[-MAX_ERROR:] for i in ids if i not in stored})
            except Exception:  # noqa: BLE001
                log.exception("cannot settle the ledger")

    def _spawn(self) -> "_Runner":
        """A spare scanning process that loads stoq and its plugins now, then waits for its job."""
        runner = _Runner.spawn()
        with self._lock:
            self._spares.add(runner)
        return runner

    def _take_runner(self) -> "_Runner":
        """This pool thread's warmed-up scanning process, or a new one."""
        spare: _Runner | None = getattr(self._local, "spare", None)
        self._local.spare = None
        if spare is not None:
            with self._lock:
                self._spares.discard(spare)
            if spare.proc.poll() is None:
                return spare
            spare.close()
        return _Runner.spawn()

    def _settle_orphans(self) -> None:
        """Embedded scans a previous server left pending (it stopped mid-scan) will never finish."""
        from stoq.tables import SCAN_LEDGER as L
        from sqlalchemy import select

        with self.store.engine.connect() as conn:
            rows = conn.execute(select(L.c.scan_id, L.c.profile).where(L.c.state == ledger.PENDING)).all()
        orphans = [scan_id for scan_id, profile in rows if isinstance(profile, dict) and profile.get("mode") == EMBEDDED]
        if orphans:
            stored = set(self._stored(orphans))
            ledger.settle(self.store, sorted(stored), {i: STOPPED for i in orphans if i not in stored})

    def _stored(self, scan_ids: list[str]) -> list[str]:
        if not scan_ids:
            return []
        with self.store.engine.connect() as conn:
            params = {f"i{n}": i for n, i in enumerate(scan_ids)}
            marks = ", ".join(f":{k}" for k in params)
            return [r[0] for r in conn.execute(sql(f"SELECT scan_id FROM scans WHERE scan_id IN ({marks})"), params)]

    # ------------------------------------------------------------------------------------------ read

    def scan(self, scan_id: str) -> ScanView | None:
        """The scan's state (the ledger's, or finished for a stored document the ledger never saw,
        such as one of ``stoq scan``) and its document once stored; None if neither knows it."""
        row = ledger.status(self.store, scan_id)
        doc = self.store.get(scan_id)
        if doc is not None:
            if row is not None and row["state"] == ledger.PENDING:  # stored before the ledger heard of it
                ledger.settle(self.store, [scan_id], {})
                row = ledger.status(self.store, scan_id)
            return ScanView(scan_id, ledger.FINISHED, doc, _iso(row["submitted_at"]) if row else None,
                            _iso(row["finished_at"]) if row else None)
        if row is None:
            return None
        return ScanView(scan_id, row["state"], None, _iso(row["submitted_at"]), _iso(row["finished_at"]), row["error"])

    def summaries(self, scan_ids: list[str]) -> list[dict[str, Any]]:
        """Short records of stored scans (id, date, root file, payload and error counts), in that order."""
        if not scan_ids:
            return []
        params = {f"i{n}": i for n, i in enumerate(scan_ids)}
        marks = ", ".join(f":{k}" for k in params)
        query = sql("SELECT s.scan_id, s.date, s.payload_count, e.filename, e.sha256, p.mime, p.size, "
                    "(SELECT count(*) FROM scan_errors x WHERE x.scan_id = s.scan_id) "
                    "FROM scans s LEFT JOIN scan_payloads e ON e.scan_id = s.scan_id AND e.depth = 0 "
                    f"LEFT JOIN payloads p ON p.sha256 = e.sha256 WHERE s.scan_id IN ({marks})")
        with self.store.engine.connect() as conn:
            found = {r[0]: {"scan_id": r[0], "date": r[1], "payloads": r[2], "filename": r[3], "sha256": r[4],
                            "mime": r[5], "size": r[6], "errors": r[7]} for r in conn.execute(query, params)}
        return [found[i] for i in scan_ids if i in found]

    def search(self, query: Query) -> list[dict[str, Any]]:
        """The stored scans that match (``stoq.search``), newest first, one page."""
        return self.summaries(search(self.store, query))

    def scans_by_sha256(self, sha256: str, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        """The stored scans holding that content (as root or as an extracted child), newest first, with
        the depths it sat at."""
        sha256 = sha256.lower()
        query = sql("SELECT s.scan_id FROM scans s WHERE s.scan_id IN "
                    "(SELECT scan_id FROM scan_payloads WHERE sha256 = :h) "
                    "ORDER BY s.scanned_at DESC, s.scan_id DESC LIMIT :limit OFFSET :offset")
        with self.store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(query, {"h": sha256, "limit": limit, "offset": offset})]
            depths: dict[str, list[int]] = {}
            if ids:
                params = {f"i{n}": i for n, i in enumerate(ids)} | {"h": sha256}
                marks = ", ".join(f":i{n}" for n in range(len(ids)))
                for scan_id, depth in conn.execute(sql(f"SELECT scan_id, depth FROM scan_payloads WHERE sha256 = :h "
                                                       f"AND scan_id IN ({marks}) ORDER BY depth"), params):
                    depths.setdefault(scan_id, []).append(depth)
        return [s | {"depths": depths.get(s["scan_id"], [])} for s in self.summaries(ids)]

    def pending_for(self, sha256: str) -> list[dict[str, Any]]:
        """Submitted scans of that root content not stored yet (pending, or failed)."""
        from sqlalchemy import select

        from stoq.tables import SCAN_LEDGER as L

        with self.store.engine.connect() as conn:
            rows = conn.execute(select(L.c.scan_id, L.c.state, L.c.filename, L.c.submitted_at, L.c.error)
                                .where(L.c.root_sha256 == sha256.lower(), L.c.state != ledger.FINISHED)
                                .order_by(L.c.submitted_at.desc())).all()
        return [{"scan_id": r[0], "state": r[1], "filename": r[2], "submitted_at": _iso(r[3]), "error": r[4]}
                for r in rows]

    def tree(self, scan_id: str) -> dict[str, Any] | None:
        """The payload tree of a stored scan (``tree_of``); None if it is not stored (yet)."""
        doc = self.store.get(scan_id)
        return None if doc is None else tree_of(doc)

    def known_payload(self, sha256: str) -> bool:
        with self.store.engine.connect() as conn:
            return conn.execute(sql("SELECT 1 FROM payloads WHERE sha256 = :h"), {"h": sha256.lower()}).first() is not None

    def payload(self, sha256: str) -> bytes | None:
        """A stored payload's bytes from the archive; None if no scan saw it or the archive lacks it."""
        from stoq.archive import ArchiveError, open_configured

        if not self.known_payload(sha256):
            return None
        try:
            archive = open_configured(self.settings)
        except ConfigError as exc:
            raise Unavailable(f"cannot open the archive: {exc}") from None
        try:
            return archive.get(sha256.lower())
        except (ArchiveError, OSError):
            return None
        finally:
            archive.close()

    def close(self) -> None:
        """Stops: no new scan begins; running scanning processes are ended (their scans fail)."""
        self._closed = True
        with self._lock:
            children = list(self._children)
        for child in children:
            child.terminate()
        self._pool.shutdown(wait=True, cancel_futures=False)
        with self._lock:
            spares, self._spares = list(self._spares), set()
        for spare in spares:
            spare.close()
        self.store.close()


class _Runner:
    """A ``stoq.web.runner --wait`` process: started ahead of its job, so that a submission does not
    wait for the interpreter, stoq's imports and the plugins' discovery (most of a second); it scans
    one job, then ends. Its stderr goes to a file of its own, whose tail ``said`` returns."""

    def __init__(self, proc: subprocess.Popen[bytes], err: Path) -> None:
        self.proc, self.err = proc, err

    @classmethod
    def spawn(cls) -> "_Runner":
        fd, name = tempfile.mkstemp(prefix="stoq-web-runner-", suffix=".err")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "stoq.web.runner", "--wait", str(os.getpid())],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=fd)
        finally:
            os.close(fd)
        return cls(proc, Path(name))

    def start(self, job: Path) -> None:
        """Hands the job over (OSError if the process has died)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{job}\n".encode())
        self.proc.stdin.close()

    def said(self) -> str:
        with open(self.err, "rb") as err:
            err.seek(max(0, err.seek(0, os.SEEK_END) - 16 * MAX_ERROR))  # its last words only
            return err.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.err.unlink(missing_ok=True)


def tree_of(doc: dict[str, Any]) -> dict[str, Any]:
    """A scan document's payloads as a tree: each node has the payload's identity, type, flags, the
    plugins that returned output, its errors and its ``children`` (in ``results`` order)."""
    errors: dict[str, list[dict[str, Any]]] = {}
    for e in doc["errors"]:
        errors.setdefault(e["payload_id"], []).append({"plugin": e["plugin"], "kind": e["kind"], "message": e["message"]})
    nodes: dict[str, dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for p in doc["results"]:
        node = {"payload_id": p["payload_id"], "filename": p["filename"], "depth": p["depth"],
                "extracted_by": p["extracted_by"], "sha256": p["sha256"], "size": p["size"], "mime": p["mime"],
                "flags": p["flags"], "plugins": list(p["workers"]), "duplicate_of": p["duplicate_of"],
                "errors": errors.get(p["payload_id"], []), "children": []}
        nodes[p["payload_id"]] = node
        parent = nodes.get(p["parent_id"]) if p["parent_id"] is not None else None
        (parent["children"] if parent is not None else roots).append(node)
    return {"scan_id": doc["scan_id"], "date": doc["date"], "payloads": doc["payloads"],
            "root": roots[0] if roots else None}
