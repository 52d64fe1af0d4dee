"""A scan document as the rows of the result store's tables, without SQLAlchemy.

Shared by :class:`stoq.store.Store` (SQLite and PostgreSQL through SQLAlchemy) and by the CLI's
:class:`stoq.sqlitedb.SqliteWriter` (the standard ``sqlite3`` module), so that both write exactly the
same rows. The tables themselves are declared in :mod:`stoq.tables` and created by the migrations.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

import orjson

from stoq.jsonb import order_hint


class NotMigrated(Exception):
    """The database schema is missing or not at :data:`HEAD_REVISION`."""


class StoreError(Exception):
    """The store cannot be opened, or a read or write failed."""


#: The tables rows are written to, in the order of :func:`document_rows`'s result.
TABLE_NAMES = ("scans", "payloads", "scan_payloads", "plugin_results", "scan_errors")
#: Each table's written columns, in row order.
ROW_COLUMNS = (
    ("scan_id", "schema_version", "date", "scanned_at", "source", "source_order", "payload_count", "root_sha256"),
    ("sha256", "md5", "sha1", "sha512", "size", "mime", "first_seen"),
    ("scan_id", "payload_id", "seq", "parent_id", "depth", "sha256", "filename", "extracted_by", "meta",
     "meta_order", "duplicate_of", "flags"),
    ("scan_id", "payload_id", "plugin", "ordinal", "result", "result_order"),
    ("scan_id", "payload_id", "plugin", "kind", "message", "seq"),
)
#: How many leading ROW_COLUMNS make each table's unique key.
KEY_LENGTHS = (1, 1, 2, 3, 4)
#: SQLite: one idempotent INSERT per table (``executemany`` of :func:`document_rows`' rows).
SQLITE_INSERTS = tuple(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                       "ON CONFLICT DO NOTHING" for table, cols in zip(TABLE_NAMES, ROW_COLUMNS))


def _parse_date(date: Any) -> datetime | None:
    if not isinstance(date, str):
        return None
    try:
        moment = datetime.fromisoformat(date)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo is timezone.utc else moment.astimezone(timezone.utc)


_DOC_KEYS = frozenset(("schema_version", "scan_id", "date", "source", "payloads", "results", "errors"))
_PAYLOAD_KEYS = frozenset(("payload_id", "parent_id", "depth", "filename", "extracted_by", "meta",
                           "duplicate_of", "size", "md5", "sha1", "sha256", "sha512", "mime", "workers",
                           "flags"))
_ERROR_KEYS = frozenset(("payload_id", "plugin", "kind", "message"))


def _check_keys(what: str, obj: Any, expected: frozenset[str]) -> None:
    if not isinstance(obj, dict):
        raise StoreError(f"{what} is a {type(obj).__name__}, not an object")
    if obj.keys() != expected:
        keys = set(obj)
        raise StoreError(f"{what} does not have the scan-document shape: missing {sorted(expected - keys)}, "
                         f"unexpected {sorted(keys - expected)}")


def document_rows(documents: Iterable[dict[str, Any]], *, sqlite: bool) -> tuple[list[tuple[Any, ...]], ...]:
    """The rows of every table (tuples in ``ROW_COLUMNS`` order), checking the document shape.

    JSON goes as text (PostgreSQL casts the literals to JSONB), with the JSONB hints on PostgreSQL;
    timestamps in SQLAlchemy's SQLite format on SQLite, as ``datetime`` for psycopg2 on PostgreSQL.
    """
    if sqlite:
        def js(value: Any) -> str:
            return dumps(value).decode()

        def hint(value: Any) -> str | None:
            return None  # SQLite's JSON text keeps everything

        def stamp(moment: datetime | None) -> Any:
            return None if moment is None else moment.replace(tzinfo=None).isoformat(" ", "microseconds")
    else:
        def js(value: Any) -> str:
            return dumps(value).decode()

        def hint(value: Any) -> str | None:  # type: ignore[misc]  # the other branch's, same signature
            h = order_hint(value)
            return None if h is None else dumps(h).decode()

        def stamp(moment: datetime | None) -> Any:
            return moment

    dumps = orjson.dumps
    scans: list[tuple[Any, ...]] = []
    payloads: dict[str, tuple[Any, ...]] = {}
    edges: list[tuple[Any, ...]] = []
    results: list[tuple[Any, ...]] = []
    errors: list[tuple[Any, ...]] = []
    for doc in documents:
        try:
            if doc.keys() != _DOC_KEYS:
                _check_keys("a document", doc, _DOC_KEYS)
            scan_id = doc["scan_id"]
            date = doc["date"]
            when = stamp(_parse_date(date))
            source = doc["source"]
            records = doc["results"]
            # scans: scan_id, schema_version, date, scanned_at, source, source_order, payload_count,
            # root_sha256
            scans.append((scan_id, doc["schema_version"], date, when, js(source), hint(source),
                          doc["payloads"], records[0]["sha256"] if records else None))
            for seq, rec in enumerate(records):
                if rec.keys() != _PAYLOAD_KEYS:
                    _check_keys(f"results[{seq}] of scan {scan_id}", rec, _PAYLOAD_KEYS)
                sha256 = rec["sha256"]
                if sha256 not in payloads:
                    # payloads: sha256, md5, sha1, sha512, size, mime, first_seen
                    payloads[sha256] = (sha256, rec["md5"], rec["sha1"], rec["sha512"], rec["size"],
                                        rec["mime"], when)
                payload_id = rec["payload_id"]
                meta = rec["meta"]
                # scan_payloads: scan_id, payload_id, seq, parent_id, depth, sha256, filename,
                # extracted_by, meta, meta_order, duplicate_of, flags
                edges.append((scan_id, payload_id, seq, rec["parent_id"], rec["depth"], sha256,
                              rec["filename"], rec["extracted_by"], js(meta), hint(meta),
                              rec["duplicate_of"], js(rec["flags"])))
                # plugin_results: scan_id, payload_id, plugin, ordinal, result, result_order
                for ordinal, (plugin, result) in enumerate(rec["workers"].items()):
                    results.append((scan_id, payload_id, plugin, ordinal, js(result), hint(result)))
            for seq, err in enumerate(doc["errors"]):
                if err.keys() != _ERROR_KEYS:
                    _check_keys(f"errors[{seq}] of scan {scan_id}", err, _ERROR_KEYS)
                # scan_errors: scan_id, payload_id, plugin, kind, message, seq
                errors.append((scan_id, err["payload_id"], err["plugin"], err["kind"], err["message"], seq))
        except StoreError:
            raise
        except (KeyError, TypeError, AttributeError, IndexError, orjson.JSONEncodeError) as exc:
            raise StoreError(f"not a scan document ({type(exc).__name__}: {exc})") from exc
    return scans, list(payloads.values()), edges, results, errors
