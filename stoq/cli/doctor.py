"""``stoq doctor``: is each installed plugin ready to run here?

For every plugin: whether it loads; the external programs it declares (``Plugin.tools``), found on
``stoq.plugin.tool_path()`` with the first line of their version output, or the Debian package to
install; its optional Python packages (``Plugin.extras``); the files its options name
(``Plugin.files``: YARA's rules, a gpg keyring); and, for scan plugins, whether ``setup()`` succeeds
with the configured options (``stoq.toml``, ``STOQ_*``, ``-o``). Exit 0 when every plugin is ready,
4 (``ExitCode.CONFIG``) when one is not: it failed to load, a program is missing, or its set-up fails.
A missing optional package only narrows what a plugin does and does not change the exit code.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, app, fail
from stoq.cli.admin import CATEGORY_ORDER
from stoq.config import ConfigError, load_settings, parse_plugin_options
from stoq.plugin import SCAN_CATEGORIES, Plugin, Tool, ToolMissing, tool_path

#: Seconds a program may take to print its version.
VERSION_TIMEOUT = 5.0


class DoctorFormat(str, Enum):
    """Output formats of ``stoq doctor``."""

    text = "text"
    json = "json"


def visible(value: str, limit: int = 200) -> str:
    """One line, control characters shown as ``\\xNN``, at most ``limit`` characters."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def tool_version(path: str, tool: Tool) -> str:
    """The first non-empty line the program prints for its version arguments ("" if none)."""
    try:
        done = subprocess.run([path, *tool.version], capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=VERSION_TIMEOUT, env={"PATH": tool_path(), "LC_ALL": "C.UTF-8"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no version: {type(exc).__name__})"
    for line in (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace").splitlines():
        if line.strip():
            return visible(line.strip(), 120)
    return ""


def examine(cls: type[Plugin], values: dict[str, Any]) -> dict[str, Any]:
    """The readiness of one loaded plugin (see the module's docstring)."""
    from stoq.registry import make_options

    tools = []
    for tool in cls.tools:
        found = shutil.which(tool.command, path=tool_path())
        tools.append({"command": tool.command, "package": tool.package, "path": found,
                      "version": tool_version(found, tool) if found else None})
    extras = [{"module": e.module, "install": e.install, "without": e.without,
               "installed": importlib.util.find_spec(e.module) is not None} for e in cls.extras]
    setup: str | None = None
    files: list[dict[str, Any]] = []
    try:
        options = make_options(cls, values)
        for name in cls.files:
            path = str(getattr(options, name, "") or "")
            if path:
                files.append({"option": name, "path": path, "exists": os.path.exists(path)})  # yara: a directory
        if cls.category in SCAN_CATEGORIES:
            cls(options).setup()
    except ToolMissing:
        pass  # the tool's own line says it
    except ConfigError as exc:
        setup = str(exc)
    except Exception as exc:
        setup = f"setup failed: {type(exc).__name__}: {exc}"
    ready = setup is None and all(t["path"] for t in tools) and all(f["exists"] for f in files)
    return {"ready": ready, "tools": tools, "extras": extras, "files": files, "setup_error": setup}


@app.command()
def doctor(format: Annotated[DoctorFormat, typer.Option("--format", "-f", help="text or json.")] = DoctorFormat.text,
           config: Annotated[Optional[Path], typer.Option("--config", "-c")] = None,
           option: Annotated[Optional[list[str]], typer.Option("--option", "-o",
                                                              help="PLUGIN.OPTION=VALUE, as for scan.")] = None) -> None:
    """Check that each plugin can run here: its external programs (with versions), optional packages,
    rule files and set-up. Exit 4 when a plugin is not ready."""
    from stoq.registry import Registry

    try:
        settings = load_settings(config, plugin_options=parse_plugin_options(option or []))
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    rows: list[dict[str, Any]] = []
    for entry in Registry.discover().entries.values():
        row: dict[str, Any] = {"name": entry.name, "category": entry.category,
                               "version": entry.cls.version if entry.cls else None, "error": entry.error}
        if entry.cls is None:
            row.update(ready=False, tools=[], extras=[], files=[], setup_error=None)
        else:
            row.update(examine(entry.cls, dict(settings.plugins.get(entry.name, {}))))
        rows.append(row)
    order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["category"], 99), r["name"]))
    if format is DoctorFormat.json:
        typer.echo(orjson.dumps({"tool_path": tool_path(), "plugins": rows}, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in text_lines(rows):
            typer.echo(line)
    if not all(r["ready"] for r in rows):
        raise typer.Exit(int(ExitCode.CONFIG))


def text_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The report for a person: one line per plugin, one per tool, extra, file or problem under it."""
    lines = []
    packages: list[str] = []
    for row in rows:
        state = "ready" if row["ready"] else "NOT READY"
        lines.append(f"{row['name']} ({row['category']}) {state}")
        if row["error"]:
            lines.append(f"  load error: {visible(row['error'])}")
        for t in row["tools"]:
            if t["path"]:
                lines.append(f"  tool {t['command']}: {visible(t['path'])} {t['version']}".rstrip())
            else:
                lines.append(f"  tool {t['command']}: MISSING (Debian: apt-get install {t['package']})")
                packages += [t["package"]] if t["package"] not in packages else []
        for e in row["extras"]:
            state = "installed" if e["installed"] else f"not installed: {e['without']} (pip install '{e['install']}')"
            lines.append(f"  optional {e['module']}: {state}")
        for f in row["files"]:
            lines.append(f"  {f['option']}: {visible(f['path'])}{'' if f['exists'] else ' (MISSING)'}")
        if row["setup_error"]:
            lines.append(f"  {visible(row['setup_error'], 500)}")
    ready = sum(r["ready"] for r in rows)
    lines.append(f"{ready} of {len(rows)} plugins ready"
                 + (f"; to install: apt-get install {' '.join(packages)}" if packages else ""))
    return lines
