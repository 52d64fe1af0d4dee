"""The result store: scan documents kept in SQL (SQLite embedded, PostgreSQL for a fleet).

A scan document (see :mod:`stoq.model`) is split into

- ``scans``           one row per scan (the original ``date`` string plus a real timestamp);
- ``payloads``        one row per distinct file content, keyed by sha256;
- ``scan_payloads``   the lineage edges: which payload sat where in which scan, in ``results`` order;
- ``plugin_results``  one row per (scan, payload, plugin), in ``workers`` order;
- ``scan_errors``     the ``errors`` list, in order.

:meth:`Store.get` puts the document back together exactly as it was saved, key order included.
SQLite stores JSON as text, which keeps everything; PostgreSQL stores it as JSONB, which keeps
neither the order of object keys nor the spelling of a float such as ``1e+16`` (it comes back as an
integer). For those, a small hint (``*_order`` columns, NULL whenever JSONB keeps the value as is)
records what JSONB forgets, so PostgreSQL round-trips exactly too.

Every write is idempotent (``INSERT ... ON CONFLICT DO NOTHING``): a redelivered batch changes nothing.

The schema belongs to the Alembic migrations in :mod:`stoq.migrations`. :meth:`Store.open` checks the
database revision with one query and, for SQLite, migrates an empty or older database itself; a
server database must be migrated explicitly (``stoq db upgrade``).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any, Iterable

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["HEAD_REVISION", "NotMigrated", "Store", "StoreError", "alembic_config", "current_revision",
           "upgrade"]

# The newest migration in ``stoq/migrations/versions`` (a test checks they agree), so that opening a
# store compares one string instead of loading the Alembic script directory.
from stoq.migrations import HEAD_REVISION  # noqa: E402

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x5370_0051  # pg_advisory_xact_lock key serialising concurrent upgrades
log = logging.getLogger(__name__)


from stoq import metrics  # noqa: E402
from stoq.jsonb import apply_hint  # noqa: E402
from stoq.model import SHA256  # noqa: E402
from stoq.rows import (KEY_LENGTHS, ROW_COLUMNS, SQLITE_INSERTS, TABLE_NAMES, NotMigrated,  # noqa: E402
                       StoreError, document_rows)
from stoq.sqlitedb import configure  # noqa: E402
from stoq.tables import TABLES, Base  # noqa: E402

# ---------------------------------------------------------------------------------- engine & migration

#: The one driver per database that the store is written for (``Store._save_pg`` speaks psycopg2), and
#: the distribution that provides it (a dependency of stoq).
_DRIVERS = {"sqlite": ("pysqlite", "sqlite3", "Python's sqlite3 module"),
            "postgresql": ("psycopg2", "psycopg2", "psycopg2-binary")}


def _url(url: str | URL) -> URL:
    """``url`` as the engine is made from it: ``postgresql://`` and ``postgres://`` (how most people
    write them; SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3) mean psycopg2, the driver
    installed with stoq. Another database, another driver, or a driver that cannot be imported is
    refused with a message naming what to write or install, before any engine is made."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # ArgumentError, ValueError
        raise StoreError(f"invalid database URL {str(url)!r}: {exc}") from exc
    backend, _, driver = parsed.drivername.partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    if backend not in _DRIVERS:
        raise StoreError(f"unsupported database {backend!r} in {_safe(parsed)}: use SQLite (sqlite:///PATH) "
                         f"or PostgreSQL (postgresql://USER@HOST/DB)")
    known, module, package = _DRIVERS[backend]
    if driver and driver != known:
        raise StoreError(f"the database driver {driver!r} in {_safe(parsed)} is not supported: write "
                         f"{backend}:// (stoq uses {known}, from {package})")
    if importlib.util.find_spec(module) is None:
        raise StoreError(f"the database {_safe(parsed)} needs {package}, which is not installed: "
                         f"pip install {package}")
    return parsed if backend == "sqlite" else parsed.set(drivername=f"{backend}+{known}")


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL (None for in-memory)."""
    db = url.database or ""
    if db in ("", ":memory:") or db.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(db)


def _make_engine(url: URL) -> Engine:
    is_sqlite = url.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {
        "json_serializer": lambda o: orjson.dumps(o).decode(),
        "json_deserializer": orjson.loads,
    }
    if not is_sqlite:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(url, **kwargs)
    except Exception as exc:  # unknown dialect, missing driver
        raise StoreError(f"cannot use database {url.render_as_string(hide_password=True)}: {exc}") from exc
    if is_sqlite:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            configure(dbapi_conn)  # transactions are begun explicitly: see _on_begin

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # A writer takes the write lock up front (waiting up to busy_timeout) instead of failing
            # with SQLITE_BUSY when it upgrades a read lock.
            write = conn.get_execution_options().get("stoq_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    return engine


def alembic_config(url: str | None = None) -> Any:
    """An Alembic ``Config`` for the bundled migrations (no ``alembic.ini`` needed).

    For ``alembic revision --autogenerate`` during development::

        from alembic import command
        command.revision(alembic_config("sqlite:///dev.db"), "describe it", autogenerate=True)
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    if url is not None:
        cfg.attributes["url"] = url  # not a main option: configparser would choke on '%' in passwords
    return cfg


def current_revision(conn: Connection) -> str | None:
    """The database's Alembic revision, None if it has never been migrated. One query."""
    try:
        with conn.begin_nested() if conn.in_transaction() else conn.begin():
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except SQLAlchemyError as exc:
        if _missing_table(exc):
            return None
        raise
    return rows[0][0] if len(rows) == 1 else (None if not rows else ",".join(sorted(r[0] for r in rows)))


def _missing_table(exc: SQLAlchemyError) -> bool:
    """True if ``exc`` says that alembic_version does not exist (and not, say, the database)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) == "42P01":  # PostgreSQL undefined_table
        return True
    message = str(orig if orig is not None else exc).lower()
    return "alembic_version" in message and ("no such table" in message or "does not exist" in message)


def _upgrade_engine(engine: Engine) -> str:
    from alembic import command

    cfg = alembic_config()
    with engine.connect().execution_options(stoq_write=True) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        revision = current_revision(conn)
    return revision or ""


def upgrade(url: str) -> str:
    """Migrates the database at ``url`` to the newest schema; returns its revision.

    Safe to run concurrently (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock) and when
    already up to date. Creates the parent directory of a SQLite file.
    """
    sa_url = _url(url)
    if sa_url.get_backend_name() == "sqlite":
        _mkparent(sa_url)
    engine = _make_engine(sa_url)
    try:
        return _upgrade_engine(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate {_safe(sa_url)}: {_reason(exc)}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("alembic"):
            raise StoreError(f"cannot migrate {_safe(sa_url)}: {_reason(exc)}") from exc
        raise
    finally:
        engine.dispose()


def _mkparent(url: URL) -> None:
    path = _sqlite_file(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {path}: {exc}") from exc


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """A database failure in the database's own words, on one line: the driver's message without
    SQLAlchemy's wrapping (the exception class, the SQL statement, the "Background on this error"
    link). The whole exception is logged at INFO (``stoq -v``)."""
    log.info("database error: %s", exc)
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    text = re.sub(r"\(Background on this error at: \S+\)", "", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------- store

class Store:
    """Saves and loads scan documents. Thread-safe; one per process is plenty."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(stoq_write=True)
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {dialect!r}: use SQLite or PostgreSQL")
        self._sqlite = dialect == "sqlite"
        self.display = _safe(engine.url)  #: the database, as messages name it (no password)
        self._columns = ROW_COLUMNS
        # JSON comes back as text from SQLite, already decoded by psycopg2 from PostgreSQL.
        self._loads: Any = _sqlite_loads if self._sqlite else _identity
        self._sql = {name: sql if self._sqlite else sql.replace(":k", "%(k)s") for name, sql in _READ_SQL.items()}
        if self._sqlite:
            # SQLite: plain executemany of prebuilt SQL and rows (JSON already text), which skips
            # SQLAlchemy's per-row parameter processing: most of the cost of a small document.
            self._inserts: list[Any] = list(SQLITE_INSERTS)
        else:
            # PostgreSQL: one INSERT per table, all sent as one simple query (one round trip, one
            # implicit transaction). Each table's rows travel as one JSON array that the server
            # unpacks with json_to_recordset: one literal per table instead of one per value (thousands
            # of literals parsed and typed one by one, on the client and the server; the figures:
            # docs/performance.md); JSON columns travel as text and are cast to JSONB.
            self._inserts = [_pg_insert(table, cols, engine.dialect) for table, cols in zip(TABLE_NAMES, self._columns)]

    @classmethod
    def open(cls, url: str, *, auto_migrate: bool | None = None) -> Store:
        """Connects to ``url`` and checks that its schema is current.

        ``auto_migrate`` (default: True for SQLite, False for server databases) creates or upgrades the
        schema when needed; without it, an out-of-date database raises :class:`NotMigrated`.
        """
        sa_url = _url(url)
        backend = sa_url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StoreError(f"unsupported database {backend!r} in {_safe(sa_url)}: use SQLite or PostgreSQL")
        is_sqlite = backend == "sqlite"
        if auto_migrate is None:
            auto_migrate = is_sqlite
        if is_sqlite and auto_migrate:
            _mkparent(sa_url)
        engine = _make_engine(sa_url)
        try:
            with engine.connect() as conn:
                revision = current_revision(conn)
            if revision != HEAD_REVISION:
                if not auto_migrate:
                    state = "has no stoq schema" if revision is None else f"is at schema revision {revision}"
                    raise NotMigrated(
                        f"the database {_safe(sa_url)} {state}, this stoq needs {HEAD_REVISION}: "
                        f"run `stoq db upgrade` (or `python manage.py db upgrade`)")
                _upgrade_engine(engine)
            return cls(engine)
        except NotMigrated:
            engine.dispose()
            raise
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StoreError(f"cannot open the store {_safe(sa_url)}: {_reason(exc)}") from exc
        except Exception as exc:
            engine.dispose()
            if type(exc).__module__.startswith("alembic"):
                raise StoreError(f"cannot migrate the store {_safe(sa_url)}: {_reason(exc)}") from exc
            raise

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ write

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        """Saves scan documents, all in one transaction. Saving a document again changes nothing."""
        rows = document_rows(documents, sqlite=self._sqlite)
        if not rows[0]:
            return
        if not self._sqlite:
            self._save_pg(rows)
            metrics.stored(rows)
            return
        try:
            with self._writer.begin() as conn:
                for sql, batch in zip(self._inserts, rows):
                    if batch:
                        conn.exec_driver_sql(sql, batch)
                # The ledger (stoq.ledger) learns it in the same transaction: saved means finished.
                at = _sqlite_time()
                conn.exec_driver_sql(_LEDGER_FINISHED_SQLITE, [(at, row[0]) for row in rows[0]])
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save {len(rows[0])} scan document(s) in {self.display}: {_reason(exc)}") from exc
        metrics.stored(rows)

    def _save_pg(self, rows: tuple[list[tuple[Any, ...]], ...]) -> None:
        """PostgreSQL: every INSERT in one query string, which the server runs as one transaction."""
        import psycopg2

        try:
            raw = self._engine.raw_connection()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save {len(rows[0])} scan document(s) in {self.display}: {_reason(exc)}") from exc
        try:
            dbapi: Any = raw.dbapi_connection  # psycopg2's connection
            cur = dbapi.cursor()
            parts, params = [], []
            for sql, cols, keylen, batch in zip(self._inserts, self._columns, KEY_LENGTHS, rows):
                if batch:
                    # Rows in key order: concurrent savers then take row locks in the same order and
                    # cannot deadlock on shared payloads.
                    batch = sorted(batch, key=lambda row: row[:keylen])
                    parts.append(sql)
                    params.append(orjson.dumps([dict(zip(cols, row)) for row in batch]).decode())
            # The ledger (stoq.ledger) learns it in the same transaction: saved means finished.
            parts.append(_LEDGER_FINISHED_PG)
            params.append(orjson.dumps([row[0] for row in rows[0]]).decode())
            # Autocommit, so that psycopg2 sends no BEGIN of its own: a query string of several
            # statements without BEGIN/COMMIT is one implicit transaction, all or nothing.
            dbapi.autocommit = True
            try:
                cur.execute("".join(parts), params)
            finally:
                dbapi.autocommit = False
            cur.close()
        except psycopg2.Error as exc:
            if isinstance(exc, psycopg2.OperationalError) or dbapi.closed:
                raw.invalidate()  # a broken connection must not go back to the pool
            raise StoreError(f"cannot save {len(rows[0])} scan document(s) in {self.display}: {_reason(exc)}") from exc
        finally:
            raw.close()

    # ------------------------------------------------------------------------------------------- read

    def get(self, scan_id: str) -> dict[str, Any] | None:
        """The document saved under ``scan_id``, exactly as it was saved; None if there is none."""
        try:
            with self._engine.connect() as conn:
                return self._load(conn, scan_id)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read scan {scan_id} from {self.display}: {_reason(exc)}") from exc

    def find(self, key: str) -> list[dict[str, Any]]:
        """Documents for ``key``: the scan with that id, or, for a sha256, every scan containing that
        payload (as root or extracted child), oldest first."""
        try:
            with self._engine.connect() as conn:
                found: list[dict[str, Any]] = []
                doc = self._load(conn, key)
                if doc is not None:
                    found.append(doc)
                if SHA256.fullmatch(key.lower()):
                    for (scan_id,) in conn.exec_driver_sql(self._sql["find"], {"k": key.lower()}).all():
                        if scan_id != key:
                            doc = self._load(conn, scan_id)
                            if doc is not None:
                                found.append(doc)
                return found
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot search {self.display} for {key}: {_reason(exc)}") from exc

    def prefixed(self, prefix: str, limit: int = 10) -> tuple[list[str], list[str]]:
        """The scan ids and the payload sha256s that begin with ``prefix`` (a sha256 in any case), at most
        ``limit`` + 1 of each (more than ``limit``: the caller says "and more"). Both searches are index
        range scans: ``prefix <= key < prefix + 'g'`` holds every key that begins with ``prefix`` when
        every character of a key sorts below ``g`` (hex digits, and the ``-`` of stoq's UUID scan
        ids); what the range holds is then checked here, whatever the database's collation."""
        lo = prefix.lower()
        params = {"lo": lo, "hi": lo + "g", "n": limit + 1, "slo": prefix, "shi": prefix + "g"}
        sql = {
            "scans": "SELECT scan_id FROM scans WHERE scan_id >= :slo AND scan_id < :shi ORDER BY scan_id LIMIT :n",
            "sha256": "SELECT sha256 FROM payloads WHERE sha256 >= :lo AND sha256 < :hi ORDER BY sha256 LIMIT :n",
        }
        if not self._sqlite:
            sql = {k: re.sub(r":(\w+)", r"%(\1)s", v) for k, v in sql.items()}
        try:
            with self._engine.connect() as conn:
                scans = [r[0] for r in conn.exec_driver_sql(sql["scans"], params).all() if r[0].startswith(prefix)]
                shas = [r[0] for r in conn.exec_driver_sql(sql["sha256"], params).all() if r[0].startswith(lo)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot search {self.display} for {prefix}: {_reason(exc)}") from exc
        return scans, shas

    def _load(self, conn: Connection, scan_id: str) -> dict[str, Any] | None:
        # Plain SQL through the driver: building and caching SQLAlchemy statements would cost more
        # than the four indexed queries themselves.
        sql, key, loads = self._sql, {"k": scan_id}, self._loads
        scan = conn.exec_driver_sql(sql["scan"], key).first()
        if scan is None:
            return None
        workers: dict[str, dict[str, Any]] = {}
        for payload_id, plugin, result, hint in conn.exec_driver_sql(sql["workers"], key):
            result = loads(result)
            workers.setdefault(payload_id, {})[plugin] = apply_hint(result, loads(hint)) if hint else result
        results = []
        for (payload_id, parent_id, depth, filename, extracted_by, meta, meta_order, duplicate_of, size, md5,
             sha1, sha256, sha512, mime, flags) in conn.exec_driver_sql(sql["payloads"], key):
            meta = loads(meta)
            results.append({
                "payload_id": payload_id, "parent_id": parent_id, "depth": depth, "filename": filename,
                "extracted_by": extracted_by, "meta": apply_hint(meta, loads(meta_order)) if meta_order else meta,
                "duplicate_of": duplicate_of, "size": size, "md5": md5, "sha1": sha1, "sha256": sha256,
                "sha512": sha512, "mime": mime, "workers": workers.get(payload_id, {}), "flags": loads(flags)})
        errors = [{"payload_id": payload_id, "plugin": plugin, "kind": kind, "message": message}
                  for payload_id, plugin, kind, message in conn.exec_driver_sql(sql["errors"], key)]
        schema_version, scan_id, date, source, source_order, payload_count = scan
        source = loads(source)
        return {"schema_version": schema_version, "scan_id": scan_id, "date": date,
                "source": apply_hint(source, loads(source_order)) if source_order else source,
                "payloads": payload_count, "results": results, "errors": errors}


#: The read queries, with ``:k`` for the key (rewritten to the driver's parameter style).
_READ_SQL = {
    "scan": "SELECT schema_version, scan_id, date, source, source_order, payload_count FROM scans "
            "WHERE scan_id = :k",
    "workers": "SELECT payload_id, plugin, result, result_order FROM plugin_results WHERE scan_id = :k "
               "ORDER BY payload_id, ordinal",
    "payloads": "SELECT e.payload_id, e.parent_id, e.depth, e.filename, e.extracted_by, e.meta, e.meta_order, "
                "e.duplicate_of, p.size, p.md5, p.sha1, p.sha256, p.sha512, p.mime, e.flags "
                "FROM scan_payloads e JOIN payloads p ON p.sha256 = e.sha256 WHERE e.scan_id = :k ORDER BY e.seq",
    "errors": "SELECT payload_id, plugin, kind, message FROM scan_errors WHERE scan_id = :k ORDER BY seq",
    "find": "SELECT scan_id FROM scans WHERE scan_id IN (SELECT scan_id FROM scan_payloads WHERE sha256 = :k) "
            "ORDER BY scanned_at, date, scan_id",
}


def _pg_insert(table: str, cols: tuple[str, ...], dialect: Any) -> str:
    """The idempotent INSERT of a table's rows given as one JSON array of objects (``%s``). Each
    column is read from the JSON with its own type, as ``stoq.tables`` declares it; a JSONB column
    arrives as the JSON text the rows hold and is cast."""
    columns = Base.metadata.tables[table].c
    types = {c: columns[c].type.compile(dialect=dialect) for c in cols}
    values = ", ".join(f"r.{c}::jsonb" if types[c] == "JSONB" else f"r.{c}" for c in cols)
    declared = ", ".join(f"{c} {'text' if types[c] == 'JSONB' else types[c]}" for c in cols)
    return (f"INSERT INTO {table} ({', '.join(cols)}) SELECT {values} FROM json_to_recordset(%s::json) "
            f"AS r({declared}) ON CONFLICT DO NOTHING;")


#: A saved scan is finished in the ledger (``stoq.ledger``), whatever it said before (a late document
#: of a scan the ledger gave up on is still the truth). A scan without a ledger row changes nothing.
_LEDGER_FINISHED_SQLITE = ("UPDATE scan_ledger SET state = 'finished', finished_at = ?, error = NULL "
                           "WHERE scan_id = ? AND state <> 'finished'")
_LEDGER_FINISHED_PG = ("UPDATE scan_ledger SET state = 'finished', finished_at = now(), error = NULL "
                       "WHERE scan_id IN (SELECT json_array_elements_text(%s::json)) AND state <> 'finished';")


def _sqlite_time() -> str:
    """Now, as SQLAlchemy's ``DateTime`` writes it in SQLite (UTC)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def _identity(value: Any) -> Any:
    return value


def _sqlite_loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def dump_sqlite_schema(path: str | Path) -> str:
    """The schema of the SQLite file at ``path`` as ``sqlite_head.sql`` holds it: every table and index
    in creation order, one statement per ``;`` line end, without ``alembic_version``'s row.

    Regenerate the bundled file after a new migration::

        python -m stoq.store dump-sqlite-schema > stoq/migrations/sqlite_head.sql
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid").fetchall()
    finally:
        db.close()
    header = (f"-- The result store's SQLite schema at revision {HEAD_REVISION}, as the Alembic migrations\n"
              "-- create it. Generated by `python -m stoq.store dump-sqlite-schema`; do not edit.\n")
    return header + "".join(f"{sql};\n" for (sql,) in rows)


def _main(argv: list[str]) -> int:
    if argv != ["dump-sqlite-schema"]:
        print("usage: python -m stoq.store dump-sqlite-schema", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "head.db"
        upgrade(f"sqlite:///{db}")
        sys.stdout.write(dump_sqlite_schema(db))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
