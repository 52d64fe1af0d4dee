"""``stoq list``, ``stoq results`` and ``stoq db upgrade``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, StoqTyper, app, fail
from stoq.cli.output import Format, Writer
from stoq.config import ConfigError, load_settings
from stoq.plugin import Plugin

db_app = StoqTyper(help="Result store administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")

CATEGORY_ORDER = ("worker", "carver", "extractor", "decoder", "reader", "connector", "archiver", "source")


class ListFormat(str, Enum):
    """Output formats of ``stoq list``."""

    text = "text"
    json = "json"


@app.command("list")
def list_plugins(format: Annotated[ListFormat, typer.Option("--format", "-f", help="text or json.")] = ListFormat.text) -> None:
    """List installed plugins by category, with version and description (and load errors)."""
    from stoq.registry import Registry

    registry = Registry.discover()
    rows: list[dict[str, Any]] = []
    for entry in registry.entries.values():
        cls: type[Plugin] | None = entry.cls
        rows.append({
            "name": entry.name,
            "category": entry.category,
            "version": cls.version if cls else None,
            "description": cls.summary() if cls else None,
            "options": {k: {"default": f.default, "description": f.description}
                        for k, f in cls.Options.model_fields.items()} if cls else {},
            "distribution": entry.distribution,
            "error": entry.error,
        })
    order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["category"], 99), r["name"]))
    if format is ListFormat.json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2, default=str).decode())
    category = None
    for row in rows if format is ListFormat.text else ():
        if row["category"] != category:
            category = row["category"]
            typer.echo(f"{category if category != '?' else 'failed to load'}:")
        if row["error"]:
            typer.echo(f"  {row['name']:<14} ERROR  {row['error']}")
        else:
            typer.echo(f"  {row['name']:<14} {row['version']:<8} {row['description']}")
    if any(r["error"] for r in rows):
        raise typer.Exit(int(ExitCode.CONFIG))


@app.command()
def results(key: Annotated[str, typer.Argument(help="A scan id, or a sha256 (every scan of that file).")],
            format: Annotated[Format, typer.Option("--format", "-f")] = Format.json,
            template: Annotated[Optional[Path], typer.Option("--template", exists=True, dir_okay=False)] = None,
            config: Annotated[Optional[Path], typer.Option("--config", "-c")] = None) -> None:
    """Print stored scan documents."""
    from stoq.store import NotMigrated, Store, StoreError

    try:
        settings = load_settings(config)
        store = Store.open(settings.resolved_database_url())
        docs = store.find(key)
        store.close()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    if not docs:
        raise fail(f"no stored scan matches {key}", ExitCode.NOT_FOUND)
    writer = Writer(format, template)
    for doc in docs:
        writer.write(doc)
    writer.close()


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
