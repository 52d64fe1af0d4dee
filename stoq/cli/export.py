"""``stoq export ID --to stix|misp``: a stored scan as a STIX 2.1 bundle or a MISP event (docs/exports.md)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, app, fail
from stoq.config import ConfigError, load_settings


class ExportTo(str, Enum):
    """The formats of ``stoq export --to``."""

    stix = "stix"
    misp = "misp"


def stored_scan(key: str, config: Path | None) -> dict[str, Any]:
    """The one stored document ``key`` names (a scan id, or an unambiguous beginning of one), as
    ``stoq results`` finds it; the command ends with ``stoq results``'s exit codes otherwise (6 unknown,
    8/9 pending or failed in the ledger, 5 store, 4 configuration, 2 a key naming several scans)."""
    from stoq.cli.admin import find_documents
    from stoq.store import NotMigrated, Store, StoreError

    key = key.strip()
    try:
        settings = load_settings(config)
        store = Store.open(settings.resolved_database_url())
        try:
            docs = find_documents(store, key)
        finally:
            store.close()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except (NotMigrated, StoreError) as exc:
        raise fail(str(exc), ExitCode.STORE) from None
    if not docs:
        raise fail(f"no stored scan matches {key}", ExitCode.NOT_FOUND)
    if len(docs) > 1:
        raise fail(f"{key} names {len(docs)} scans (a sha256 found in each): give one scan id, "
                   + ", ".join(d["scan_id"] for d in docs[:10]), ExitCode.USAGE)
    return docs[0]


@app.command("export")
def export(key: Annotated[str, typer.Argument(metavar="SCAN_ID", help="A stored scan's id (or an unambiguous beginning of it, as stoq results takes).")],
           to: Annotated[ExportTo, typer.Option("--to", "-t", help="stix (a STIX 2.1 bundle) or misp (a MISP event).")],
           config: Annotated[Optional[Path], typer.Option("--config", "-c")] = None) -> None:
    """Print a stored scan as a STIX 2.1 bundle or a MISP event (JSON on stdout; needs the extra 'exports')."""
    from stoq.exports import ExportUnavailable, export_document

    document = stored_scan(key, config)
    try:
        exported = export_document(document, to.value)
    except ExportUnavailable as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    typer.echo(orjson.dumps(exported, option=orjson.OPT_INDENT_2).decode())
