"""The PostgreSQL payload archive (``archiver = "postgres"``): payloads as rows, for a cluster whose
machines share no filesystem.

One table, created by ``prepare`` (no Alembic: the archive may live in another database than the
result store)::

    stoq_archive (sha256 text primary key, content bytea not null, size bigint not null,
                  stored_at timestamptz default now())

Bytes travel in PostgreSQL's binary COPY format, not as SQL literals: psycopg2 would send and
receive a bytea as hex text, twice its size, which is several times slower and fails above 512 MiB
(a query or a value's text form must stay under 1 GiB). A batch is copied into a temporary table and
moved with ``INSERT ... ON CONFLICT (sha256) DO NOTHING``, in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections import deque
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from stoq.model import SHA256
from stoq.plugin import ArchiveError, ArchiverPlugin, PluginOptions

TABLE = "stoq_archive"
_INCOMING = "stoq_archive_incoming"
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = _SIGNATURE + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
_SCHEME = re.compile(r"^(postgresql|postgres)(\+\w+)?://", re.IGNORECASE)
_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")


class PostgresArchive(ArchiverPlugin):
    """Stores payloads as rows of a PostgreSQL table: for a cluster whose machines share no filesystem.

    ``url`` is a SQLAlchemy or libpq URL (``postgresql+psycopg2://user@host:5432/db``; the driver
    part is dropped). Each process opens its own connection, lazily: a forked child never uses (nor
    closes) its parent's. ``put`` buffers payloads; ``flush`` writes the buffered ones in one
    transaction, skipping those already stored, and ``put`` flushes by itself once ``FLUSH_EVERY``
    payloads or ``FLUSH_BYTES`` bytes are buffered. ``get`` answers a buffered payload from the
    buffer, and verifies the sha256 of what it reads from the table. A failed flush keeps the
    payloads buffered for the next one. Payloads over ``MAX_BYTES`` (a bytea holds just under
    1 GiB) are refused. Not thread-safe: one instance per thread.
    """

    FLUSH_EVERY = 64
    FLUSH_BYTES = 8 << 20
    # A row, its bytea and its COPY message must each stay under 1 GiB. On PostgreSQL 15 a payload of
    # 1 GiB - 256 bytes round-trips and one of 1 GiB - 64 fails ("tuple is too big"); keep a margin.
    MAX_BYTES = (1 << 30) - 4096
    CONNECT_TIMEOUT = 10

    name = "postgres"
    version = "1.0"

    def __init__(self, url: str, options: PluginOptions | None = None) -> None:
        super().__init__(url, options)
        self.url = url
        self.display = _PASSWORD.sub(r"\1:***@", url)
        self._pid = -1

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._conn: psycopg2.extensions.connection | None = None
        self._incoming = False  # whether this connection has its temporary table
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0

    def _state(self) -> None:
        if self._pid != os.getpid():
            # A forked child drops its parent's connection and buffer without closing or flushing them:
            # close() would end the parent's session; psycopg2 itself closes a connection on garbage
            # collection only in the process that opened it.
            self._reset()

    def _connect(self) -> psycopg2.extensions.connection:
        if self._conn is not None and self._conn.closed:
            self._conn = None
        if self._conn is None:
            if not self.url:
                raise ArchiveError("archiver postgres needs the setting archive (STOQ_ARCHIVE) to be a PostgreSQL URL")
            if not _SCHEME.match(self.url):
                raise ArchiveError(f"archiver postgres needs a postgresql:// URL, not {self.display!r}")
            dsn = _SCHEME.sub("postgresql://", self.url, count=1)
            try:
                given = psycopg2.extensions.parse_dsn(dsn)
                extra: dict[str, Any] = {key: value for key, value in (
                    ("connect_timeout", self.CONNECT_TIMEOUT), ("application_name", "stoq-archive")) if key not in given}
                conn = psycopg2.connect(dsn, **extra)
                conn.autocommit = True  # a transaction only where flush begins one
            except psycopg2.Error as exc:
                raise ArchiveError(f"cannot connect to the archive {self.display}: {_message(exc)}") from exc
            self._conn = conn
            self._incoming = False
        return self._conn

    def _failed(self, exc: BaseException, what: str) -> ArchiveError:
        """After an error: a broken connection is dropped (the next call opens a new one), an
        unfinished transaction rolled back. Returns the ArchiveError to raise."""
        conn = self._conn
        if conn is not None and not conn.closed:
            if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
                try:
                    with conn.cursor() as cur:
                        cur.execute("ROLLBACK")
                except psycopg2.Error:
                    conn.close()
        if conn is not None and conn.closed:
            self._conn = None
        return ArchiveError(f"{what} in the archive {self.display}: {_message(exc)}")

    def prepare(self) -> None:
        """Creates the table if needed (call before forking workers: the connection is closed after)."""
        self._state()
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (sha256 text PRIMARY KEY, content bytea NOT NULL, "
                            "size bigint NOT NULL, stored_at timestamptz DEFAULT now())")
        except (psycopg2.errors.UniqueViolation, psycopg2.errors.DuplicateTable):
            pass  # another process created it at the same moment
        except psycopg2.Error as exc:
            raise self._failed(exc, "cannot create the table") from exc
        self.close()

    def exists(self, sha256: str) -> bool:
        self._state()
        if sha256 in self._pending:
            return True
        try:
            with self._connect().cursor() as cur:
                cur.execute(f"SELECT 1 FROM {TABLE} WHERE sha256 = %s", (sha256,))
                return cur.fetchone() is not None
        except psycopg2.Error as exc:
            raise self._failed(exc, f"cannot look up payload {sha256}") from exc

    def put(self, sha256: str, content: bytes) -> None:
        self._state()
        if not SHA256.fullmatch(sha256):
            raise ArchiveError(f"not a sha256: {sha256!r}")
        if len(content) > self.MAX_BYTES:
            raise ArchiveError(f"payload {sha256} has {len(content)} bytes, more than a PostgreSQL archive "
                               f"holds ({self.MAX_BYTES})")
        if sha256 in self._pending:
            return
        self._pending[sha256] = bytes(content)
        self._pending_bytes += len(content)
        if len(self._pending) >= self.FLUSH_EVERY or self._pending_bytes >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Writes the buffered payloads not stored yet, in one transaction."""
        self._state()
        if not self._pending:
            return
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                if not self._incoming:
                    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_INCOMING} (sha256 text, content bytea, "
                                "size bigint) ON COMMIT DELETE ROWS")
                    self._incoming = True
                cur.execute("BEGIN")
                cur.execute(f"SELECT sha256 FROM {TABLE} WHERE sha256 = ANY(%s)", (list(self._pending),))
                stored = {row[0] for row in cur.fetchall()}
                rows = [(sha, data) for sha, data in self._pending.items() if sha not in stored]
                if rows:
                    cur.copy_expert(f"COPY {_INCOMING} (sha256, content, size) FROM STDIN (FORMAT binary)",
                                    _CopyIn(rows), size=1 << 20)
                    cur.execute(f"INSERT INTO {TABLE} (sha256, content, size) SELECT sha256, content, size "
                                f"FROM {_INCOMING} ON CONFLICT (sha256) DO NOTHING")
                cur.execute("COMMIT")
        except BaseException as exc:  # also an interrupted COPY: never leave the transaction open
            error = self._failed(exc, f"cannot store {len(self._pending)} payload(s)")
            if isinstance(exc, psycopg2.Error):
                raise error from exc
            raise
        self._pending.clear()
        self._pending_bytes = 0

    def get(self, sha256: str, verify: bool = True) -> bytes:
        self._state()
        pending = self._pending.get(sha256)
        if pending is not None:
            return pending
        if not SHA256.fullmatch(sha256):
            raise ArchiveError(f"not a sha256: {sha256!r}")
        sink = _CopyOut()
        try:
            with self._connect().cursor() as cur:
                query = cur.mogrify(f"COPY (SELECT content FROM {TABLE} WHERE sha256 = %s) TO STDOUT (FORMAT binary)",
                                    (sha256,))
                cur.copy_expert(query.decode(), sink)
        except psycopg2.Error as exc:
            raise self._failed(exc, f"cannot read payload {sha256}") from exc
        content = sink.value()
        if content is None:
            raise ArchiveError(f"payload {sha256} is not in the archive {self.display}")
        if verify and hashlib.sha256(content).hexdigest() != sha256:
            raise ArchiveError(f"payload {sha256} is damaged in the archive {self.display}")
        return content

    def delete(self, sha256: str) -> None:
        self._state()
        dropped = self._pending.pop(sha256, None)
        if dropped is not None:
            self._pending_bytes -= len(dropped)
        try:
            with self._connect().cursor() as cur:
                cur.execute(f"DELETE FROM {TABLE} WHERE sha256 = %s", (sha256,))
        except psycopg2.Error as exc:
            raise self._failed(exc, f"cannot delete payload {sha256}") from exc

    def close(self) -> None:
        """Flushes, then closes this process's connection (a forked child leaves its parent's alone)."""
        if self._pid != os.getpid():
            return
        try:
            self.flush()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _CopyIn:
    """Rows of (sha256, content, size) in binary COPY format, read in pieces (``copy_expert`` calls
    ``read``), so that a large payload is not concatenated into a second copy."""

    def __init__(self, rows: list[tuple[str, bytes]]) -> None:
        parts: list[bytes] = [_COPY_HEADER]
        for sha256, content in rows:
            key = sha256.encode()
            parts += [struct.pack("!hi", 3, len(key)) + key + struct.pack("!i", len(content)), content,
                      struct.pack("!iq", 8, len(content))]
        parts.append(_COPY_TRAILER)
        self._parts = deque(memoryview(part) for part in parts)

    def read(self, size: int = -1) -> bytes:
        out: list[memoryview] = []
        want = size if size > 0 else 1 << 62
        while self._parts and want > 0:
            part = self._parts.popleft()
            if len(part) > want:
                self._parts.appendleft(part[want:])
                part = part[:want]
            out.append(part)
            want -= len(part)
        return out[0].tobytes() if len(out) == 1 else b"".join(out)


class _CopyOut:
    """Receives the binary COPY of one bytea column (``copy_expert`` calls ``write``)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(data)
        return len(data)

    def value(self) -> bytes | None:
        """The first row's value, None when there is no row. PostgreSQL sends the header with the
        first row, so that message usually holds the whole value and nothing is joined."""
        try:
            return _first_value(self.chunks[0] if self.chunks else b"")
        except _Truncated:
            pass
        try:
            return _first_value(b"".join(self.chunks))
        except _Truncated:
            raise ArchiveError("truncated COPY output from PostgreSQL") from None


class _Truncated(Exception):
    """The COPY output read so far ends before the value."""


def _first_value(data: bytes) -> bytes | None:
    """The value of the first row of a one-column binary COPY, None when there is no row."""
    if len(data) < 19 or not data.startswith(_SIGNATURE):
        raise _Truncated
    (extension,) = struct.unpack_from("!I", data, 15)
    at = 19 + extension
    if len(data) < at + 2:
        raise _Truncated
    (fields,) = struct.unpack_from("!h", data, at)
    if fields == -1:
        return None
    if fields != 1:
        raise ArchiveError(f"unexpected COPY row of {fields} fields from PostgreSQL")
    if len(data) < at + 6:
        raise _Truncated
    (length,) = struct.unpack_from("!i", data, at + 2)
    if length < 0:
        raise ArchiveError("NULL content from PostgreSQL")
    start = at + 6
    if len(data) < start + length:
        raise _Truncated
    return data[start:start + length]


def _message(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
