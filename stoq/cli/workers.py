"""``stoq workers``: every live worker of the cluster, its plugins with their versions and the queues
it consumes, and what sets it apart from the others: a plugin another worker has that it lacks, a
plugin installed in another version elsewhere, a queue it consumes without the plugin that runs its
tasks, a plugin queue no worker consumes.

It broadcasts the ``stoq_plugins`` inspect command (``stoq.tasks.remote``) on the broker of the
settings and prints the replies that arrive within ``--timeout`` seconds. Exit code 0 when the
workers agree, 4 when something above is found or no worker answers.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, app, fail
from stoq.cli.output import safe
from stoq.config import ConfigError, load_settings
from stoq.plugin import SCAN_CATEGORIES


class WorkersFormat(str, Enum):
    """Output formats of ``stoq workers``."""

    text = "text"
    json = "json"


def loaded(report: dict[str, Any]) -> dict[str, str | None]:
    """A worker's plugins that load: name -> version."""
    return {name: p["version"] for name, p in report.get("plugins", {}).items() if not p.get("error")}


def compare(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What sets each worker apart (see the module's docstring), from the workers' replies."""
    everywhere: dict[str, dict[str, list[str]]] = {}  # plugin -> version -> workers
    for worker, report in reports.items():
        for name, version in loaded(report).items():
            everywhere.setdefault(name, {}).setdefault(str(version), []).append(worker)
    workers = {}
    for worker, report in sorted(reports.items()):
        mine = loaded(report)
        lacks = {name: sorted(w for ws in versions.values() for w in ws)
                 for name, versions in sorted(everywhere.items()) if name not in mine}
        differs = {name: {v: sorted(ws) for v, ws in sorted(everywhere[name].items())}
                   for name in sorted(mine) if len(everywhere[name]) > 1}
        scan_queues = {name for name, p in report.get("plugins", {}).items()
                       if p.get("category") in SCAN_CATEGORIES}
        known = {name for r in reports.values() for name, p in r.get("plugins", {}).items()
                 if p.get("category") in SCAN_CATEGORIES}
        # a queue named after a plugin some worker runs, consumed here where that plugin is missing
        orphan = sorted(q for q in report.get("queues", []) if q in known and (q not in scan_queues or q not in mine))
        errors = {name: p["error"] for name, p in sorted(report.get("plugins", {}).items()) if p.get("error")}
        workers[worker] = {"stoq": report.get("stoq"), "plugins": dict(sorted(mine.items())),
                           "queues": report.get("queues", []), "lacks": lacks, "differs": differs,
                           "queues_without_plugin": orphan, "load_errors": errors}
    consumed = {q for r in reports.values() for q in r.get("queues", [])}
    plugin_queues = {name for r in reports.values() for name, p in r.get("plugins", {}).items()
                     if p.get("category") in SCAN_CATEGORIES and not p.get("error")}
    unserved = sorted(plugin_queues - consumed)
    agree = not unserved and not any(w["lacks"] or w["differs"] or w["queues_without_plugin"] or w["load_errors"]
                                     for w in workers.values())
    return {"workers": workers, "unserved_queues": unserved, "agree": agree}


def text_lines(found: dict[str, Any]) -> list[str]:
    lines = []
    for name, w in found["workers"].items():
        lines.append(f"{safe(name)}: stoq {w['stoq']}, {len(w['plugins'])} plugin(s), {len(w['queues'])} queue(s)")
        for plugin, on in w["lacks"].items():
            lines.append(f"  LACKS {plugin} (installed on {', '.join(map(safe, on))})")
        for plugin, versions in w["differs"].items():
            shown = "; ".join(f"{v} on {', '.join(map(safe, ws))}" for v, ws in versions.items())
            lines.append(f"  VERSIONS DIFFER {plugin}: {shown}")
        for queue in w["queues_without_plugin"]:
            lines.append(f"  CONSUMES {queue} WITHOUT ITS PLUGIN (its tasks fail here)")
        for plugin, error in w["load_errors"].items():
            lines.append(f"  LOAD ERROR {plugin}: {safe(error)}")
        lines.append("  plugins: " + ", ".join(f"{p} {v}" for p, v in w["plugins"].items()))
        lines.append("  queues: " + ", ".join(w["queues"]))
    if found["unserved_queues"]:
        lines.append(f"NO WORKER CONSUMES {', '.join(found['unserved_queues'])} (their plugins' tasks wait)")
    lines.append(f"{len(found['workers'])} worker(s); " + ("they agree" if found["agree"] else "they differ (above)"))
    return lines


@app.command()
def workers(format: Annotated[WorkersFormat, typer.Option("--format", "-f", help="text or json.")] = WorkersFormat.text,
            timeout: Annotated[float, typer.Option("--timeout", "-t", min=0.1, help="Seconds to wait for the workers' replies.")] = 2.0,
            config: Annotated[Optional[Path], typer.Option("--config", "-c", help="stoq.toml to use.")] = None) -> None:
    """List the cluster's live workers with their plugins, versions and queues, and what one lacks
    that another has. Exit 4 when they differ or none answers."""
    from stoq.tasks.config import make_app
    from stoq.tasks.remote import COMMAND

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    if not settings.broker_url:
        raise fail("no broker configured (STOQ_BROKER_URL or broker_url in stoq.toml): no cluster to ask",
                   ExitCode.CONFIG)
    from kombu.utils.url import maybe_sanitize_url

    shown = safe(maybe_sanitize_url(settings.broker_url))  # no password
    client = make_app("stoq-client")
    client.conf.update(broker_url=settings.broker_url)
    try:
        replies = client.control.broadcast(COMMAND, reply=True, timeout=timeout)
    except Exception as exc:  # kombu's OperationalError, a refused connection
        raise fail(f"cannot reach the broker {shown}: {type(exc).__name__}: {exc}",
                   ExitCode.CONFIG) from None
    reports = {name: body for reply in replies or [] for name, body in reply.items() if isinstance(body, dict)
               and "plugins" in body}
    if not reports:
        raise fail(f"no worker answered within {timeout:g} s on {shown}", ExitCode.CONFIG)
    found = compare(reports)
    if format is WorkersFormat.json:
        typer.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in text_lines(found):
            typer.echo(line)
    if not found["agree"]:
        raise typer.Exit(int(ExitCode.CONFIG))
