"""``stoq --version``: stoq's version, the versions of the libraries the plugins rest on, and of the
external programs found (the tools the plugins declare, as ``stoq doctor`` finds them).

A library that is not installed is shown as ``not installed``; a program not found as ``MISSING``
with the Debian package that installs it. Nothing here loads a plugin's set-up: it is as quick as
``stoq list``.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

import orjson
import typer

#: The distribution stoq is installed as.
DISTRIBUTION = "stoq-analysis"
#: Python libraries whose version matters to what the plugins report, by distribution name.
LIBRARIES = ("yara-python", "python-magic", "pefile", "celery", "kombu", "sqlalchemy", "pydantic", "typer")


def _libyara() -> str | None:
    """The version of libyara that yara-python is built against (``yara.__version__``)."""
    yara = importlib.import_module("yara")
    return str(yara.__version__)


def _libmagic() -> str | None:
    """libmagic's version, as python-magic reads it (``magic.version()``: 545 for 5.45)."""
    magic = importlib.import_module("magic")
    number = int(magic.version())
    return f"{number // 100}.{number % 100:02d}"


#: Native libraries behind the Python ones: how to read each one's version.
NATIVE: dict[str, Callable[[], str | None]] = {"libyara": _libyara, "libmagic": _libmagic}


def library_versions() -> dict[str, str | None]:
    """Each of :data:`LIBRARIES` (its installed distribution's version) and :data:`NATIVE`; None when
    it is not installed or cannot say."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    for name, read in NATIVE.items():
        try:
            found[name] = read()
        except Exception:  # not installed, or a build without the attribute: the version is unknown
            found[name] = None
    return found


def tool_versions() -> list[dict[str, Any]]:
    """Every external program an installed plugin declares, once, in name order: its path on the
    plugins' tool path and the first line of its version output (``stoq doctor``'s reading)."""
    from stoq.cli.doctor import tool_version
    from stoq.plugin import tool_path
    from stoq.registry import Registry

    tools: dict[str, Any] = {}
    users: dict[str, list[str]] = {}
    for entry in Registry.discover().entries.values():
        for tool in entry.cls.tools if entry.cls else ():
            tools.setdefault(tool.command, tool)
            users.setdefault(tool.command, []).append(entry.name)
    rows = []
    for command in sorted(tools):
        tool = tools[command]
        path = shutil.which(command, path=tool_path())
        rows.append({"command": command, "package": tool.package, "path": path,
                     "version": tool_version(path, tool) if path else None, "plugins": sorted(users[command])})
    return rows


def report() -> dict[str, Any]:
    """What ``stoq --version --format json`` prints."""
    try:
        stoq = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that is not installed
        stoq = None
    return {"stoq": stoq, "python": sys.version.split()[0], "libraries": library_versions(),
            "tools": tool_versions()}


def text_lines(data: dict[str, Any]) -> list[str]:
    """The report for a person: ``stoq X``, then one line per library and per program."""
    from stoq.cli.doctor import visible

    lines = [f"stoq {data['stoq'] or 'unknown'} (Python {data['python']})"]
    for name, found in data["libraries"].items():
        lines.append(f"  {name}: {found or 'not installed'}")
    for tool in data["tools"]:
        if tool["path"]:
            lines.append(f"  {tool['command']}: {tool['version'] or '(no version output)'} ({visible(tool['path'])})")
        else:
            lines.append(f"  {tool['command']}: MISSING (Debian: apt-get install {tool['package']})")
    return lines


def show(fmt: str) -> None:
    """Prints the report in ``fmt`` (``text`` or ``json``) on stdout."""
    data = report()
    if fmt == "json":
        typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in text_lines(data):
            typer.echo(line)
