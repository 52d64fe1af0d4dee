"""``stoq list``, ``stoq results`` and ``stoq db upgrade``."""

from __future__ import annotations

import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, StoqTyper, app, fail
from stoq.cli.output import Format, Writer, safe
from stoq.config import ConfigError, did_you_mean, load_settings
from stoq.plugin import SCAN_CATEGORIES, Plugin

db_app = StoqTyper(help="Result store administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")

CATEGORY_ORDER = ("worker", "carver", "extractor", "decoder", "reader", "connector", "archiver", "source")


def _complete_any(incomplete: str) -> list[str]:
    from stoq.cli.completion import complete_any_plugin

    return complete_any_plugin(incomplete)


class ListFormat(str, Enum):
    """Output formats of ``stoq list``."""

    text = "text"
    json = "json"


@app.command("list")
def list_plugins(names: Annotated[Optional[list[str]], typer.Argument(metavar="[PLUGIN]...", autocompletion=lambda incomplete: _complete_any(incomplete), help="Show these plugins in full: description and every option, with its type and default.")] = None,
                 format: Annotated[ListFormat, typer.Option("--format", "-f", help="text or json.")] = ListFormat.text) -> None:
    """List installed plugins by category, with version and description (and load errors)."""
    from stoq.registry import Registry

    registry = Registry.discover()
    for name in names or ():
        if name not in registry.entries:
            raise fail(f"no plugin {name!r} is installed{did_you_mean(name, registry.entries)}", ExitCode.NOT_FOUND)
    rows = plugin_rows(registry, names)
    if format is ListFormat.json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
    elif names:
        for row in rows:
            typer.echo(detail(row))
    else:
        for line in summary_lines(rows):
            typer.echo(line)
    if any(r["error"] for r in rows):
        raise typer.Exit(int(ExitCode.CONFIG))


def plugin_rows(registry: Any, names: Any = None) -> list[dict[str, Any]]:
    """``stoq list``'s rows (every plugin, or those in ``names``), by category then name."""
    rows: list[dict[str, Any]] = []
    for entry in registry.entries.values():
        if names and entry.name not in names:
            continue
        cls: type[Plugin] | None = entry.cls
        rows.append({
            "name": entry.name,
            "category": entry.category,
            "version": cls.version if cls else None,
            "description": cls.summary() if cls else None,
            "options": {k: {"type": type_name(f.annotation), "default": f.get_default(call_default_factory=True),
                            "description": f.description}
                        for k, f in cls.Options.model_fields.items()} if cls else {},
            "distribution": entry.distribution,
            "error": entry.error,
        })
    order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["category"], 99), r["name"]))
    return rows


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``stoq list``'s text: a heading per category, a line per plugin (its load error if it has one)."""
    lines = []
    category = None
    for row in rows:
        if row["category"] != category:
            category = row["category"]
            lines.append(f"{category if category != '?' else 'failed to load'}:")
        if row["error"]:
            lines.append(f"  {row['name']:<14} ERROR  {safe(row['error'])}")
        else:
            lines.append(f"  {row['name']:<14} {safe(row['version']):<8} {safe(row['description'])}")
    return lines


def type_name(annotation: Any) -> str:
    """An option's type in words: ``integer``, ``path``, ``list of text``, ``path or none``."""
    words = {bool: "boolean", int: "integer", float: "number", str: "text", Path: "path", type(None): "none"}
    if annotation in words:
        return words[annotation]
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) and args:
        return f"list of {type_name(args[0])}"
    if origin is dict and len(args) == 2:
        return f"NAME=VALUE pairs ({type_name(args[1])})"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if args:  # a union
        return " or ".join(type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def detail(row: dict[str, Any]) -> str:
    """``stoq list PLUGIN``: one plugin in full."""
    lines = [f"{row['name']} ({row['category']}, version {row['version']}, from {row['distribution'] or '?'})"]
    if row["error"]:
        lines.append(f"  ERROR  {safe(row['error'])}")
        return "\n".join(lines) + "\n"
    lines.append(f"  {safe(row['description'])}")
    lines.append(f"  options (-o {row['name']}.OPTION=VALUE):")
    for option, info in row["options"].items():
        default = info["default"]
        shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        lines.append(f"    {option}  {info['type']}, default {shown or '(empty)'}")
        lines.append(f"        {safe(info['description'] or '')}")
    if row["category"] in SCAN_CATEGORIES:  # the framework's limit on a plugin run; connectors and archivers have none
        lines.append(f"    time_limit  number, default the timeout setting (every plugin: seconds it may spend on one payload)")
    return "\n".join(lines) + "\n"


#: Candidates listed when a prefix given to ``stoq results`` is ambiguous.
AMBIGUOUS_SHOWN = 10


@app.command()
def results(key: Annotated[Optional[str], typer.Argument(metavar="[KEY]", help="A scan id or a sha256 (every scan of that file), or any unambiguous beginning of one (the table's sha256:ee373616eed8f5b7). Without KEY: search with the options below.")] = None,
            format: Annotated[Format, typer.Option("--format", "-f")] = Format.json,
            template: Annotated[Optional[str], typer.Option("--template", metavar="FILE|builtin:NAME", help="A Jinja2 template (sandboxed), or builtin:payloads, builtin:csv, builtin:markdown.")] = None,
            config: Annotated[Optional[Path], typer.Option("--config", "-c")] = None,
            limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="At most this many scans (search: default 20, newest first).")] = None,
            since: Annotated[Optional[str], typer.Option("--since", metavar="WHEN", help="Scanned at or after: ISO 8601 (2026-12-01, 2026-12-01T08:00Z) or a duration back from now (7d, 12h, 30m).")] = None,
            until: Annotated[Optional[str], typer.Option("--until", metavar="WHEN", help="Scanned before (as --since).")] = None,
            filename: Annotated[Optional[str], typer.Option("--filename", metavar="PATTERN", help="A payload's filename matches this pattern (* and ?, any case).")] = None,
            mime: Annotated[Optional[str], typer.Option("--mime", metavar="PATTERN", help="A payload's MIME type matches (application/zip, 'application/*').")] = None,
            flag: Annotated[Optional[str], typer.Option("--flag", help="A payload carries this flag (limit:depth).")] = None,
            plugin: Annotated[Optional[str], typer.Option("--plugin", help="A plugin returned output for a payload.")] = None,
            yara: Annotated[Optional[str], typer.Option("--yara", metavar="RULE", help="This YARA rule matched a payload.")] = None,
            where: Annotated[Optional[list[str]], typer.Option("--where", metavar="PLUGIN.KEY=VALUE", help="A scalar in a plugin's output equals VALUE (peinfo.is_dll=true, filetype.magika.label=pebin); repeatable.")] = None,
            ids: Annotated[bool, typer.Option("--ids", help="Print only the scan ids, one a line.")] = False) -> None:
    """Print stored scan documents: by id or sha256, or those a search finds (--since, --mime, --yara...)."""
    from stoq.search import Query, parse_when, parse_where, search
    from stoq.store import NotMigrated, Store, StoreError

    searching = bool(where) or any(v is not None for v in (since, until, filename, mime, flag, plugin, yara))
    if key is not None and searching:
        raise fail("give a KEY or search options (--since, --filename, --mime, --flag, --plugin, --yara, --where), not both",
                   ExitCode.USAGE)
    if key is None and not searching and limit is None:
        raise fail("give a KEY (a scan id or a sha256), or search options (see stoq results --help)", ExitCode.USAGE)
    try:
        conditions = tuple(parse_where(w) for w in where or ())
    except ValueError as exc:
        raise fail(f"--where: {exc}", ExitCode.USAGE) from None
    try:
        query = Query(filename=filename, mime=mime, flag=flag, plugin=plugin, yara=yara, where=conditions,
                      since=parse_when(since) if since is not None else None,
                      until=parse_when(until) if until is not None else None,
                      limit=limit if limit is not None else 20)
    except ValueError as exc:
        raise fail(f"--since/--until: {exc}", ExitCode.USAGE) from None
    if key is not None:
        key = key.strip()
        if key.lower().startswith("sha256:"):  # pasted from the table
            key = key[len("sha256:"):]
    try:
        settings = load_settings(config)
        store = Store.open(settings.resolved_database_url())
        try:
            if key is None:
                found = search(store, query)
                docs = [d for d in map(store.get, found) if d is not None] if not ids else [{"scan_id": i} for i in found]
            else:
                docs = find_documents(store, key)
                docs = docs[:limit] if limit is not None else docs
        finally:
            store.close()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    if not docs:
        raise fail(f"no stored scan matches {key}" if key is not None else "no stored scan matches the search",
                   ExitCode.NOT_FOUND)
    if ids:
        for doc in docs:
            typer.echo(doc["scan_id"])
        return
    writer = Writer(format, template)
    for doc in docs:
        writer.write(doc)
    writer.close()


def ledger_status(store: Any, scan_id: str) -> dict[str, Any] | None:
    """A submitted scan with no document yet, as the ledger (``stoq.ledger``) holds it."""
    from stoq import ledger

    row = ledger.status(store, scan_id)
    return row if row is not None and row["state"] != ledger.FINISHED else None


def find_documents(store: Any, key: str) -> list[dict[str, Any]]:
    """The stored documents ``key`` names (a scan id or a sha256, else a scan id's beginning); a scan the
    ledger holds as pending or failed ends the command there (``pending_answer``)."""
    docs: list[dict[str, Any]] = store.find(key)
    if not docs and key:
        pending = ledger_status(store, key)
        if pending is not None:
            pending_answer(pending)
        docs = by_prefix(store, key)
    return docs


def pending_answer(row: dict[str, Any]) -> None:
    """Prints where an unfinished scan stands (JSON on stdout, a sentence on stderr); exit code 8 while
    it is pending, 9 if the ledger gave it up."""
    from stoq import ledger

    when = {k: row[k].isoformat() if row[k] is not None else None
            for k in ("submitted_at", "last_attempt_at", "finished_at")}
    typer.echo(orjson.dumps({"scan_id": row["scan_id"], "state": row["state"], "attempts": row["attempts"],
                             "error": row["error"], "sha256": row["root_sha256"]} | when).decode())
    if row["state"] == ledger.FAILED:
        raise fail(f"scan {row['scan_id']} failed: {row['error']}", ExitCode.FAILED)
    raise fail(f"scan {row['scan_id']} is pending since {when['submitted_at']} ({row['attempts']} publish(es), "
               f"the last at {when['last_attempt_at']})", ExitCode.PENDING)


def by_prefix(store: Any, prefix: str) -> list[dict[str, Any]]:
    """The documents of the one scan id or sha256 that begins with ``prefix``; none when nothing does.
    Several: the command ends with the candidates listed (exit code 2)."""
    scans, shas = store.prefixed(prefix, AMBIGUOUS_SHOWN)
    found = [f"scan {s}" for s in scans] + [f"sha256 {h}" for h in shas]
    if len(found) == 1:
        return store.find(scans[0] if scans else shas[0])
    if found:
        more = len(scans) > AMBIGUOUS_SHOWN or len(shas) > AMBIGUOUS_SHOWN
        listed = "; ".join(found[:AMBIGUOUS_SHOWN]) + ("; and more" if more or len(found) > AMBIGUOUS_SHOWN else "")
        raise fail(f"{prefix} is ambiguous: it begins {listed} (give more characters)", ExitCode.USAGE)
    return []


@db_app.command("upgrade")
def db_upgrade(config: Annotated[Optional[Path], typer.Option("--config", "-c")] = None) -> None:
    """Create or migrate the result store's tables (Alembic) to the newest revision."""
    from stoq.store import StoreError, upgrade

    try:
        url = load_settings(config).resolved_database_url()
        revision = upgrade(url)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except StoreError as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    typer.echo(f"stoq: result store at revision {revision}", err=True)
