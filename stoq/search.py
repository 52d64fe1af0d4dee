"""Searching the result store: the scans whose payloads match a filename, a MIME type, a flag, a
plugin's output or a YARA rule, within a time range; what ``stoq results`` runs without a KEY.

One SQL query per search, the same on SQLite and PostgreSQL but for the JSON columns (``flags``, a
plugin's ``result``): SQLite reads their text with ``json_each``, PostgreSQL compares JSONB with
``@>``. ``--where PLUGIN.KEY=VALUE`` compares a scalar of a plugin's output
(``json_type``/``json_extract`` on SQLite, ``#>`` on PostgreSQL). The payload conditions hold for **one** payload of the scan (``--mime application/zip
--flag X``: a zip that carries X), the time range for the scan. Newest scans first.

Indexes: the time range reads ``ix_scans_scanned_at``; the payload conditions are checked per scan
payload row through the primary keys (``scan_payloads``, ``plugin_results``), ``ix_plugin_results_plugin``
narrowing ``--plugin`` and ``--yara``. See docs/queries.md for the SQL and the payload tree's queries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from stoq.rows import StoreError

#: ``7d``, ``12h``, ``30m``, ``45s``, ``2w``: a duration back from now.
RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, now: datetime | None = None) -> datetime:
    """A moment given as ISO 8601 (``2026-12-01``, ``2026-12-01T08:00:00Z``; UTC when no zone is
    given) or as a duration back from now (``7d``, ``12h``, ``30m``). ValueError if neither."""
    value = value.strip()
    match = RELATIVE.match(value)
    if match:
        return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"{value!r} is neither an ISO 8601 date or time nor a duration such as 7d, 12h or 30m") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def like_pattern(glob: str) -> str:
    """A shell-style pattern (``*`` any text, ``?`` one character) as a SQL LIKE pattern with ``\\``
    as its escape: ``%`` and ``_`` in the pattern match themselves."""
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


#: ``--where PLUGIN.KEY[.KEY...]=VALUE``: names made of these characters only (they go into a JSON path).
WHERE = re.compile(r"^([a-z0-9_-]{1,64})((?:\.[A-Za-z0-9_-]+)+)=(.*)$", re.S)


@dataclass(frozen=True)
class Where:
    """A scalar in a plugin's output: ``plugin``'s result at ``path`` (keys, outermost first) equals
    ``value`` (a JSON scalar: text, number, true, false or null)."""

    plugin: str
    path: tuple[str, ...]
    value: Any


def parse_where(given: str) -> Where:
    """``peinfo.machine=IMAGE_FILE_MACHINE_AMD64``, ``filetype.extension_mismatch=true``,
    ``filetype.magika.label=pebin``, ``entropy.blocks_total=1``: VALUE is read as JSON when it is a
    JSON scalar (``true``, ``12``, ``null``, ``"12"``), else as text. ValueError otherwise."""
    match = WHERE.match(given)
    if not match:
        raise ValueError(f"{given!r} is not PLUGIN.KEY=VALUE (keys: letters, digits, '_' and '-'; "
                         "nested keys joined with '.')")
    plugin, path, raw = match[1], tuple(match[2][1:].split(".")), match[3]
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    if isinstance(value, (dict, list)):
        value = raw  # only scalars are compared
    return Where(plugin, path, value)


def _where_sql(where: Where, n: int, sqlite: bool, params: dict[str, Any]) -> str:
    """The condition on a plugin_results row ``r`` for one :class:`Where` (parameters ``w<n>_*``)."""
    params[f"w{n}_plugin"] = where.plugin
    if sqlite:
        params[f"w{n}_path"] = "$" + "".join(f'."{key}"' for key in where.path)
        value, path = where.value, f":w{n}_path"
        if value is None:
            test = f"json_type(r.result, {path}) = 'null'"
        elif isinstance(value, bool):
            test = f"json_type(r.result, {path}) = '{'true' if value else 'false'}'"
        elif isinstance(value, (int, float)):
            params[f"w{n}_value"] = value
            test = f"json_type(r.result, {path}) IN ('integer', 'real') AND json_extract(r.result, {path}) = :w{n}_value"
        else:
            params[f"w{n}_value"] = value
            test = f"json_type(r.result, {path}) = 'text' AND json_extract(r.result, {path}) = :w{n}_value"
    else:
        params[f"w{n}_path"] = "{" + ",".join(where.path) + "}"
        params[f"w{n}_value"] = orjson.dumps(where.value).decode()
        test = f"r.result #> CAST(:w{n}_path AS text[]) = CAST(:w{n}_value AS jsonb)"
    return (f"EXISTS (SELECT 1 FROM plugin_results r WHERE r.scan_id = e.scan_id AND r.payload_id = e.payload_id "
            f"AND r.plugin = :w{n}_plugin AND {test})")


@dataclass
class Query:
    """What to look for; None is "any"."""

    filename: str | None = None  #: shell pattern, any case, on the payload's filename
    mime: str | None = None  #: shell pattern, any case, on the payload's MIME type
    flag: str | None = None  #: a flag the payload carries, exactly
    plugin: str | None = None  #: a plugin that returned output for the payload
    yara: str | None = None  #: a YARA rule that matched the payload
    where: tuple[Where, ...] = ()  #: scalars in plugins' output
    since: datetime | None = None  #: scanned at or after
    until: datetime | None = None  #: scanned before
    limit: int = 20
    offset: int = 0  #: matching scans skipped first (paging: the next page's offset is offset + limit)

    def payload_filters(self) -> bool:
        return bool(self.where) or any(v is not None for v in (self.filename, self.mime, self.flag, self.plugin, self.yara))


def search_sql(query: Query, sqlite: bool) -> tuple[str, dict[str, Any]]:
    """The query's SQL (``:name`` parameters, as SQLAlchemy's ``text()`` takes them) and parameters."""
    params: dict[str, Any] = {"limit": query.limit, "offset": query.offset}
    scan_conds: list[str] = []
    if query.since is not None:
        scan_conds.append("s.scanned_at >= :since")
        params["since"] = query.since
    if query.until is not None:
        scan_conds.append("s.scanned_at < :until")
        params["until"] = query.until
    conds: list[str] = []
    if query.filename is not None:
        conds.append("lower(e.filename) LIKE lower(:filename) ESCAPE '\\'")
        params["filename"] = like_pattern(query.filename)
    if query.mime is not None:
        conds.append("lower(p.mime) LIKE lower(:mime) ESCAPE '\\'")
        params["mime"] = like_pattern(query.mime)
    if query.flag is not None:
        conds.append("EXISTS (SELECT 1 FROM json_each(e.flags) f WHERE f.value = :flag)" if sqlite
                     else "e.flags @> jsonb_build_array(CAST(:flag AS text))")
        params["flag"] = query.flag
    if query.plugin is not None:
        conds.append("EXISTS (SELECT 1 FROM plugin_results r WHERE r.scan_id = e.scan_id "
                     "AND r.payload_id = e.payload_id AND r.plugin = :plugin)")
        params["plugin"] = query.plugin
    if query.yara is not None:
        matched = ("EXISTS (SELECT 1 FROM json_each(r.result, '$.matches') m "
                   "WHERE json_extract(m.value, '$.rule') = :yara)" if sqlite
                   else "r.result -> 'matches' @> jsonb_build_array(jsonb_build_object('rule', CAST(:yara AS text)))")
        conds.append("EXISTS (SELECT 1 FROM plugin_results r WHERE r.scan_id = e.scan_id "
                     f"AND r.payload_id = e.payload_id AND r.plugin = 'yara' AND {matched})")
        params["yara"] = query.yara
    for n, where in enumerate(query.where):
        conds.append(_where_sql(where, n, sqlite, params))
    if conds:
        join = " JOIN payloads p ON p.sha256 = e.sha256" if query.mime is not None else ""
        scan_conds.append(f"EXISTS (SELECT 1 FROM scan_payloads e{join} WHERE e.scan_id = s.scan_id AND "
                          + " AND ".join(conds) + ")")
    where = f" WHERE {' AND '.join(scan_conds)}" if scan_conds else ""
    sql = f"SELECT s.scan_id FROM scans s{where} ORDER BY s.scanned_at DESC, s.scan_id DESC LIMIT :limit OFFSET :offset"
    return sql, params


def search(store: Any, query: Query) -> list[str]:
    """The ids of the scans in ``store`` (a :class:`stoq.store.Store`) that match, newest first, at
    most ``query.limit``, after the first ``query.offset``."""
    sqlite = store.engine.dialect.name == "sqlite"
    sql, params = search_sql(query, sqlite)
    if sqlite:  # timestamps as SQLAlchemy's SQLite DateTime stores them (naive UTC text)
        params = {k: v.replace(tzinfo=None).isoformat(" ", "microseconds") if isinstance(v, datetime) else v
                  for k, v in params.items()}
    try:
        with store.engine.connect() as conn:
            return [row[0] for row in conn.execute(text(sql), params)]
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot search {store.display}: {type(exc).__name__}: {exc}") from exc
