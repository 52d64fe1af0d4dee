"""Content-addressed payload archive: bytes stored and fetched by sha256.

Every archive is an archiver plugin (``stoq.plugin.ArchiverPlugin``) found through the ``stoq.plugins``
entry points, chosen by the setting ``archiver`` (:func:`open_configured`). The bundled ones live in
the core because the engine's fast paths rely on the pack: ``PackArchive`` (``pack``, the default:
appends to pack files, fast on any local disk), ``DirectoryArchive`` (``directory``: one file per
payload, simple to inspect, works over NFS), ``NoArchive`` (``none``) and ``PostgresArchive``
(``postgres``, ``stoq/archive_pg.py``, imported only when used: a cluster without a shared
filesystem); ``s3`` and ``gridfs`` are plugins (``plugins/s3.py``, ``plugins/gridfs.py``). The
directory archive lays a payload at ``ROOT/ab/cd/abcd...`` (sha256 in hex). Writes go to a
temporary file in the same directory and are renamed into place, so a reader never sees a partial
payload and two processes writing the same payload do not conflict. An archive is shared by the
embedded worker processes and, over a shared filesystem, by the workers of a cluster.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
import sqlite3
import stat
import time
from contextlib import suppress
import tempfile
from pathlib import Path
from typing import Any, Mapping, TYPE_CHECKING, TypeAlias

from stoq.model import SHA256
from stoq.plugin import ArchiveError, ArchiverPlugin, PluginOptions

if TYPE_CHECKING:
    from stoq.config import Settings
    from stoq.registry import Registry

__all__ = ["ArchiveError", "Archive", "DirectoryArchive", "PackArchive", "NoArchive", "open_archive",
           "open_configured", "put_where", "put_many_where", "read_from", "read_input", "HOLD_BYTES"]


class DirectoryArchive(ArchiverPlugin):
    """Stores each payload as a file of a local (or NFS) directory, at ROOT/ab/cd/<sha256>."""

    name = "directory"
    version = "1.0"
    directory = True

    def __init__(self, root: str | os.PathLike[str], options: PluginOptions | None = None) -> None:
        super().__init__(root, options)
        self.root = Path(root)

    def prepare(self) -> None:
        """Creates the archive's directory."""
        self.root.mkdir(parents=True, exist_ok=True)

    def flush(self) -> None:
        """Nothing to do: every put is complete when it returns."""

    def close(self) -> None:
        """Nothing to release."""

    def path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):
            raise ArchiveError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, sha256: str, content: bytes) -> None:
        target = self.path(sha256)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, sha256: str, verify: bool = True) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise ArchiveError(f"payload {sha256} is not in the archive {self.root}") from exc

    def delete(self, sha256: str) -> None:
        with suppress(FileNotFoundError):
            self.path(sha256).unlink()



#: Forks this process descends from (0 in the first one): a ``PackArchive`` made before a fork starts
#: afresh in the child (its own pack, its own SQLite connection) without a getpid() on every call.
_FORKS = 0


def _forked() -> None:
    global _FORKS
    _FORKS += 1


os.register_at_fork(after_in_child=_forked)


class PackArchive(ArchiverPlugin):
    """Appends payloads to pack files found through a SQLite index: the default, fastest on a local disk.

    Creating one file per payload costs more kernel time than hashing, typing and matching a typical
    payload together; appending to an open pack costs a small fraction of it (the figures:
    docs/performance.md). Layout under ``ROOT``::

        packs/<host>-<pid>-<random>.pack   records: b"SQPK" + sha256 (32 bytes) + length (8, big-endian) + bytes
        index.sqlite                       sha256 -> (pack, offset, length)

    Each process appends to packs of its own (opened lazily, so a forked worker never shares its
    parent's), and adds index rows in batches (every ``FLUSH_EVERY`` payloads or ``FLUSH_SECONDS``,
    and on ``close``). ``get`` verifies the sha256 of what it reads. A process killed between an
    append and its index flush leaves bytes that ``reindex`` recovers from the pack headers.

    A place this archive hands out (``put_located``, ``put_many_located``) holds exactly the bytes
    given: appended just now, or found in the index and compared with them (a record that differs
    is appended again and its index row replaced). So a reader given the place and the sha256 by
    their writer needs no hash of its own: ``read_record`` checks the record's header names that
    sha256 and length, which catches a wrong or stale place, and returns the bytes.
    """

    MAGIC = b"SQPK"
    HEADER = 44
    PACK_LIMIT = 1 << 30
    FLUSH_EVERY = 64
    FLUSH_SECONDS = 0.5
    READERS = 64
    COMPARE_CHUNK = 1 << 20  # bytes of a stored record compared with a new payload at a time

    name = "pack"
    version = "1.0"
    directory = True
    locates = True

    def __init__(self, root: str | os.PathLike[str], options: PluginOptions | None = None) -> None:
        super().__init__(root, options)
        self.root = Path(root)
        self._gen = -1

    def _reset(self) -> None:
        self._gen = _FORKS
        self._fd: int | None = None
        self._pack = ""
        self._offset = 0
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, str, int, int]] = []
        self._local: dict[str, tuple[str, int, int]] = {}
        self._last_flush = time.monotonic()
        self._readers: dict[str, int] = {}  # pack -> read-only fd (packs only grow: offsets stay valid)

    def _state(self) -> None:
        if self._gen != _FORKS:
            self._reset()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 60000")
            for attempt in range(50):  # switching a new file to WAL can fail while another process does it
                try:
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    if attempt == 49:
                        raise
                    time.sleep(0.02)
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, pack TEXT NOT NULL, "
                       "offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID")
            self._db = db
        return self._db

    def prepare(self) -> None:
        """Creates the archive's directory and index now (call before forking workers)."""
        self._state()
        self._conn()
        self.close()

    def _locate(self, sha256: str) -> tuple[str, int, int] | None:
        found = self._local.get(sha256)
        if found is None:
            row = self._conn().execute("SELECT pack, offset, length FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
            found = tuple(row) if row else None  # type: ignore[assignment]
        return found

    def _writer(self, size: int) -> int:
        if self._fd is None or self._offset + size > self.PACK_LIMIT:
            if self._fd is not None:
                os.close(self._fd)
            packs = self.root / "packs"
            packs.mkdir(parents=True, exist_ok=True)
            self._pack = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.pack"
            self._fd = os.open(packs / self._pack, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            self._offset = 0
        return self._fd

    def exists(self, sha256: str) -> bool:
        self._state()
        return self._locate(sha256) is not None

    def put(self, sha256: str, content: bytes) -> None:
        self.put_located(sha256, content)

    def put_many_located(self, items: list[tuple[str, bytes]]) -> list[tuple[str, int, int]]:
        """:meth:`put_located` for several payloads, with one index query for all of them."""
        self._state()
        known = dict(self._local)
        wanted = [sha256 for sha256, _ in items if sha256 not in known]
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters is 999 or more
            chunk = wanted[start:start + 500]
            rows = self._conn().execute(f"SELECT sha256, pack, offset, length FROM blobs WHERE sha256 IN "
                                        f"({', '.join('?' * len(chunk))})", chunk).fetchall()
            known.update((row[0], (row[1], row[2], row[3])) for row in rows)
        places = []
        for sha256, content in items:
            found = known.get(sha256)
            if found is None or (sha256 not in self._local and not self._same(found, content)):
                found = known[sha256] = self._append(sha256, content)  # once, even if ``items`` holds it twice
            places.append(found)
        return places

    def put_located(self, sha256: str, content: bytes) -> tuple[str, int, int]:
        """Stores a payload (unless it is there already) and returns where it is: (pack, offset,
        length), which :meth:`read_at` takes in any process, before the index row is even written."""
        self._state()
        found = self._locate(sha256)
        if found is not None and (sha256 in self._local or self._same(found, content)):
            return found
        return self._append(sha256, content)

    def _append(self, sha256: str, content: bytes) -> tuple[str, int, int]:
        header = self.MAGIC + bytes.fromhex(sha256) + len(content).to_bytes(8, "big")
        fd = self._writer(len(header) + len(content))
        written = os.writev(fd, [header, content])
        if written != len(header) + len(content):
            raise ArchiveError(f"short write to pack {self._pack}")
        where = (self._pack, self._offset + len(header), len(content))
        self._offset += written
        self._local[sha256] = where
        self._pending.append((sha256, *where))
        if len(self._pending) >= self.FLUSH_EVERY or time.monotonic() - self._last_flush > self.FLUSH_SECONDS:
            self.flush()
        return where

    def flush(self) -> None:
        """Writes pending index rows (one transaction)."""
        self._state()
        if self._pending:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", self._pending)
            self._pending.clear()
            self._local.clear()
        self._last_flush = time.monotonic()

    def get(self, sha256: str, verify: bool = True) -> bytes:
        self._state()
        where = self._locate(sha256)
        if where is None:
            raise ArchiveError(f"payload {sha256} is not in the archive {self.root}")
        return self.read_at(where, sha256 if verify else None)

    def read_at(self, where: tuple[str, int, int], sha256: str | None = None) -> bytes:
        """The bytes at a location :meth:`put_located` returned; checked against ``sha256`` if given."""
        self._state()
        pack, offset, length = where
        if "/" in pack or pack.startswith("."):
            raise ArchiveError(f"not a pack name: {pack!r}")
        fd = self._readers.get(pack)
        if fd is None:
            if len(self._readers) >= self.READERS:
                os.close(self._readers.pop(next(iter(self._readers))))
            fd = self._readers[pack] = os.open(self.root / "packs" / pack, os.O_RDONLY)
        content = os.pread(fd, length, offset)
        if len(content) != length:
            raise ArchiveError(f"payload {sha256 or ''} is truncated in pack {pack}")
        if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
            raise ArchiveError(f"payload {sha256} is damaged in pack {pack}")
        return content

    def read_record(self, where: tuple[str, int, int], sha256: str) -> bytes:
        """The bytes at a place this archive handed out for ``sha256`` (see the class docstring):
        the record's header must name that sha256 and length; the bytes are not hashed again."""
        pack, offset, length = where
        if offset < self.HEADER:
            raise ArchiveError(f"not a record's place: {where!r}")
        if not SHA256.fullmatch(sha256):
            raise ArchiveError(f"not a sha256: {sha256!r}")
        header = self.read_at((pack, offset - self.HEADER, self.HEADER))
        if header != self.MAGIC + bytes.fromhex(sha256) + length.to_bytes(8, "big"):
            raise ArchiveError(f"payload {sha256} is not at {pack}:{offset} (damaged or moved)")
        return self.read_at(where)

    def _same(self, where: tuple[str, int, int], content: bytes) -> bool:
        """Whether the record at ``where`` (found in the index) holds exactly ``content``. Compared a
        chunk at a time, so that a large payload is never held twice (the client of a cluster
        archiving a 1 GiB input it sent before)."""
        pack, offset, length = where
        if length != len(content):
            return False
        view = memoryview(content)
        try:
            for start in range(0, length, self.COMPARE_CHUNK):
                part = view[start:start + self.COMPARE_CHUNK]
                if self.read_at((pack, offset + start, len(part))) != part:
                    return False
        except (OSError, ArchiveError):
            return False
        return True

    def delete(self, sha256: str) -> None:
        """Forgets a payload (its bytes stay in the pack until the pack is removed)."""
        self.flush()
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.execute("DELETE FROM blobs WHERE sha256 = ?", (sha256,))

    def reindex(self) -> int:
        """Re-adds index rows for every complete record in every pack; returns how many were read."""
        self.flush()
        rows = []
        for pack in sorted((self.root / "packs").glob("*.pack")):
            with open(pack, "rb") as handle:
                offset = 0
                while True:
                    header = handle.read(self.HEADER)
                    if len(header) < self.HEADER or header[:4] != self.MAGIC:
                        break
                    length = int.from_bytes(header[36:44], "big")
                    handle.seek(length, os.SEEK_CUR)
                    if handle.tell() > pack.stat().st_size:
                        break
                    rows.append((header[4:36].hex(), pack.name, offset + self.HEADER, length))
                    offset += self.HEADER + length
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", rows)
        return len(rows)

    def close(self) -> None:
        if self._gen == _FORKS:
            self.flush()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._db is not None:
                self._db.close()
                self._db = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()


class NoArchive(ArchiverPlugin):
    """Keeps nothing (``archiver = "none"``): for quick triage where payloads need not be kept."""

    name = "none"
    version = "1.0"
    directory = True  # the setting archive is not read; a directory default keeps it a path

    def exists(self, sha256: str) -> bool:
        return False

    def put(self, sha256: str, content: bytes) -> None:
        return None

    def get(self, sha256: str, verify: bool = True) -> bytes:
        raise ArchiveError("the archive is disabled (archiver = none)")

    def delete(self, sha256: str) -> None:
        return None

    def prepare(self) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


#: Any archive (the type every caller holds): an archiver plugin.
Archive: TypeAlias = ArchiverPlugin
#: The archivers bundled with stoq's core, by name (the rest come from entry points only).
ARCHIVERS = ("pack", "directory", "none", "postgres")


#: File data a reader of root files (the embedded pool's parent, the cluster's client) holds at most
#: before it archives what it has read: a burst of big inputs is archived as it goes, not held.
HOLD_BYTES = 32 << 20


def read_input(path: str | os.PathLike[str], limit: int) -> bytes | None:
    """A root file's bytes, read with one ``open`` and one ``fstat`` (the buffer sized as the file
    is); None when the file is larger than ``limit``. Opened without blocking: a FIFO (or a device)
    put where a regular file was is refused (``OSError``), never waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0) as handle:
        mode = os.fstat(fd)
        if not stat.S_ISREG(mode.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if mode.st_size > limit:
            return None
        return handle.readall()


def put_where(archive: Archive, sha256: str, content: bytes) -> list[Any] | None:
    """Stores a payload; returns where it lies when the archive can say (a pack: ``[pack, offset,
    length]``, as JSON carries it), else None. A reference that carries the place spares every
    reader its index look-up (``read_from``)."""
    if archive.locates:
        return list(archive.put_located(sha256, content))  # type: ignore[arg-type]
    archive.put(sha256, content)
    return None


def put_many_where(archive: Archive, items: list[tuple[str, bytes]]) -> list[list[Any] | None]:
    """:func:`put_where` for several payloads (``(sha256, content)``): one index query for all of
    them in a pack."""
    if archive.locates:
        return [list(where) for where in archive.put_many_located(items)]  # type: ignore[arg-type]
    archive.put_many_located(items)  # an archiver may batch the puts
    return [None] * len(items)


def read_from(archive: Archive, sha256: str, at: list[Any] | None) -> tuple[bytes, bool]:
    """A payload's bytes, and whether they are known to have that sha256. Read at its place when the
    reference carries one (no index look-up, and before the index row is even written; the record's
    header is checked, the bytes are known: see ``PackArchive``), else by sha256, unverified: the
    caller hashes them."""
    if at is not None and archive.locates:
        pack, offset, length = at
        return archive.read_record((str(pack), int(offset), int(length)), sha256), True
    return archive.get(sha256, verify=False), False


def archiver_class(name: str, registry: "Registry | None" = None) -> type[ArchiverPlugin]:
    """The archiver plugin of that name, through the entry points (``registry``, or a new discovery;
    the core's own archivers without one, so a client that has not discovered plugins pays nothing)."""
    from stoq.config import ConfigError

    if registry is None and name in ARCHIVERS:
        if name == "postgres":
            from stoq.archive_pg import PostgresArchive

            return PostgresArchive
        return {"pack": PackArchive, "directory": DirectoryArchive, "none": NoArchive}[name]
    if registry is None:
        from stoq.registry import Registry

        registry = Registry.discover()
    entry = registry.entries.get(name)
    if entry is None:
        known = sorted(e.name for e in registry.entries.values() if e.category == "archiver")
        raise ConfigError(f"unknown archiver {name!r} (installed: {', '.join(known)}; see `stoq list`)")
    cls = registry.get(name)
    if not issubclass(cls, ArchiverPlugin):
        raise ConfigError(f"plugin {name!r} is a {cls.category}, not an archiver")
    return cls


def open_archive(kind: str, root: str | os.PathLike[str], options: Mapping[str, Any] | None = None,
                 registry: "Registry | None" = None) -> Archive:
    """The archiver ``kind`` on the location ``root`` (a directory for ``pack`` and ``directory``; a
    PostgreSQL URL, a str passed on unchanged, for ``postgres``; an ``s3://`` or ``mongodb://`` URL for
    ``s3`` and ``gridfs``), with its options (text values are coerced, as from ``-o``)."""
    from stoq.config import ConfigError
    from stoq.registry import make_options

    try:
        cls = archiver_class(kind, registry)
    except ConfigError as exc:
        raise ArchiveError(str(exc)) from exc
    if not cls.directory and not isinstance(root, str):  # a Path would turn "postgresql://h/db" into "postgresql:/h/db"
        raise ArchiveError(f"archiver {kind} needs a URL as a str, not {type(root).__name__}")
    made = make_options(cls, options or {}) if options else None
    return cls(Path(root) if cls.directory else root, made)


def open_configured(settings: "Settings", registry: "Registry | None" = None) -> Archive:
    """The archive the settings name: ``archiver`` on ``archive``, with ``[plugins.<archiver>]``
    options. A ConfigError names an unknown archiver or a bad option."""
    from stoq.config import data_dir
    from stoq.registry import make_options

    cls = archiver_class(settings.archiver, registry)
    options = make_options(cls, settings.plugins.get(settings.archiver, {}))
    if cls.directory:
        return cls(Path(settings.archive) if settings.archive else data_dir() / "archive", options)
    return cls(settings.archive, options)
