"""``stoq connectors status`` and ``stoq connectors catch-up``: the store's connector outbox."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, StoqTyper, app, fail, say
from stoq.config import ConfigError, load_settings

connectors_app = StoqTyper(help="Connector deliveries kept in the result store's outbox.", no_args_is_help=True)
app.add_typer(connectors_app, name="connectors")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c")]
OnlyOpt = Annotated[Optional[str], typer.Option("--connectors", metavar="NAMES", help="Only these connectors, comma-separated (default: every one with rows).")]


def _open(config: Path | None, names: list[str] | None = None, options: list[str] | None = None) -> tuple[Any, Any]:
    from stoq.cli.options import command_line_settings
    from stoq.config import parse_plugin_options
    from stoq.store import NotMigrated, Store, StoreError

    try:
        if options:  # -o for the connectors named, or for those the options name
            chosen = names if names is not None else sorted(parse_plugin_options(options))
            settings = command_line_settings(config, {"connectors": ",".join(chosen)}, options)
        else:
            settings = load_settings(config)
        return settings, Store.open(settings.resolved_database_url())
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None


@connectors_app.command("status")
def status(config: ConfigOpt = None) -> None:
    """Print the outbox's rows (one JSON line each: connector, scan id, state, attempts, next try, last error)."""
    from stoq.outbox import Outbox

    _, store = _open(config)
    with store:
        for row in Outbox(store).rows():
            typer.echo(orjson.dumps(row).decode())


@connectors_app.command("catch-up")
def catch_up(config: ConfigOpt = None, connectors: OnlyOpt = None,
             now: Annotated[bool, typer.Option("--now", help="Retry every pending row at once, not only those whose backoff is over.")] = False,
             limit: Annotated[int, typer.Option("--limit", min=1, help="Rows per round.")] = 500,
             option: Annotated[Optional[list[str]], typer.Option("--option", "-o", metavar="PLUGIN.OPTION=VALUE", help="A connector option (repeatable), e.g. a secret the outbox does not keep: -o queue.url=amqp://...")] = None) -> None:
    """Deliver the documents the connectors could not take (rows due in the outbox), until none is
    left or a round fails; print the counts as one JSON object. Each connector is rebuilt from the
    options stored with its rows over this command's configuration (stoq.toml, STOQ_*, -o), which
    supplies the secret ones. Exit code 5 if some are still pending."""
    from stoq.outbox import Outbox, catch_up as run

    names = [n.strip() for n in connectors.split(",") if n.strip()] if connectors else None
    settings, store = _open(config, names, option)
    totals: dict[str, dict[str, int]] = {"delivered": {}, "withheld": {}, "missing": {}, "failed": {}}
    with store:
        due_by = float("inf") if now else None
        while True:
            result = run(store, settings, connectors=names, due_by=due_by, limit=limit)
            for key in totals:
                for name, n in getattr(result, key).items():
                    totals[key][name] = totals[key].get(name, 0) + n
            for message in result.errors:
                say(message)
            moved = sum(result.delivered.values()) + sum(result.withheld.values()) + sum(result.missing.values())
            if not moved or result.errors:
                break
            due_by = time.time() if not now else due_by
        pending = Outbox(store).pending_count(names)
    typer.echo(orjson.dumps(totals | {"pending": pending}).decode())
    if pending:
        raise typer.Exit(int(ExitCode.STORE))
