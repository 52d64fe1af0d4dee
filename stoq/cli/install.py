"""``stoq install`` and ``stoq uninstall``: plugin packages in the environment ``stoq`` runs in.

``install`` runs ``python -m pip install`` with the interpreter running stoq, so the package lands
where stoq's entry-point discovery looks; pip reads its own configuration (``pip.conf``, ``PIP_*``)
as always, and the index options given here are passed on. The distributions installed before and
after are compared: what the command added or changed is what it installed, and the ``stoq.plugins``
entry points of those distributions are the plugins it brought. A package that brings none is
refused, and every distribution the command added (the package and the dependencies it pulled in)
is uninstalled again.

``uninstall`` takes a plugin name or a distribution name and refuses stoq itself and the plugins
bundled with it.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from enum import Enum
from importlib.metadata import distributions
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, app, fail, say
from stoq.cli.admin import plugin_rows, summary_lines
from stoq.config import did_you_mean

#: The distribution stoq and its bundled plugins are installed as.
STOQ_DISTRIBUTION = "stoq-analysis"


class InstallFormat(str, Enum):
    """Output formats of ``stoq install`` and ``stoq uninstall``."""

    text = "text"
    json = "json"


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503: case and ``-_.`` runs do not matter)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution in this environment: canonical name -> version."""
    importlib.invalidate_caches()
    return {canonical(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}


def pip(*args: str) -> int:
    """Runs pip of this interpreter; its output goes to stderr (stdout is stoq's data)."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], stdout=sys.stderr.fileno(), stdin=subprocess.DEVNULL)
    return done.returncode


def registry() -> Any:
    from stoq.registry import Registry

    importlib.invalidate_caches()
    return Registry.discover()


def plugins_of(dists: set[str]) -> list[dict[str, Any]]:
    """``stoq list``'s rows of the plugins the distributions ``dists`` (canonical names) declare."""
    found = registry()
    names = [e.name for e in found.entries.values() if e.distribution and canonical(e.distribution) in dists]
    return plugin_rows(found, names) if names else []


def show(fmt: InstallFormat, data: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if fmt is InstallFormat.json:
        typer.echo(orjson.dumps(data | {"plugins": rows}, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        for line in summary_lines(rows):
            typer.echo(line)


@app.command()
def install(targets: Annotated[list[str], typer.Argument(metavar="PATH|PACKAGE|GIT_URL", help="What pip installs: a project directory, a wheel, a requirement (name, name==1.2) or a git+https:// URL.")],
            index_url: Annotated[Optional[str], typer.Option("--index-url", "-i", metavar="URL", help="Passed to pip.")] = None,
            extra_index_url: Annotated[Optional[list[str]], typer.Option("--extra-index-url", metavar="URL", help="Passed to pip (repeatable).")] = None,
            find_links: Annotated[Optional[list[str]], typer.Option("--find-links", metavar="URL|DIR", help="Passed to pip (repeatable).")] = None,
            no_index: Annotated[bool, typer.Option("--no-index", help="Passed to pip: no package index.")] = False,
            no_build_isolation: Annotated[bool, typer.Option("--no-build-isolation", help="Passed to pip: build with the packages installed here.")] = False,
            upgrade: Annotated[bool, typer.Option("--upgrade", "-U", help="Passed to pip.")] = False,
            pre: Annotated[bool, typer.Option("--pre", help="Passed to pip: allow pre-releases.")] = False,
            format: Annotated[InstallFormat, typer.Option("--format", "-f", help="text or json.")] = InstallFormat.text) -> None:
    """Install a plugin package with pip into the environment stoq runs in, and list the plugins it
    added. A package that brings no stoq plugin is refused and removed again, with what it pulled in."""
    args = ["install", "--disable-pip-version-check"]
    args += ["--index-url", index_url] if index_url else []
    for url in extra_index_url or ():
        args += ["--extra-index-url", url]
    for url in find_links or ():
        args += ["--find-links", url]
    args += [flag for flag, on in (("--no-index", no_index), ("--no-build-isolation", no_build_isolation),
                                   ("--upgrade", upgrade), ("--pre", pre)) if on]
    before = installed()
    if pip(*args, "--", *targets) != 0:
        after = installed()
        if after != before:  # pip stops on the first failure: nothing half-installed stays
            _remove(sorted(set(after) - set(before)))
        raise fail(f"pip could not install {' '.join(targets)} (its messages are above)", ExitCode.INSTALL)
    after = installed()
    added = sorted(set(after) - set(before))
    changed = sorted(n for n in after if n in before and after[n] != before[n])
    rows = plugins_of(set(added) | set(changed))
    data = {"added": {n: after[n] for n in added}, "changed": {n: [before[n], after[n]] for n in changed}}
    if not added and not changed:
        say(f"nothing was installed: {' '.join(targets)} is already installed (`stoq list` shows its plugins; "
            "--upgrade to install a newer version)")
        show(format, data, [])
        return
    if not rows:
        _remove(added)
        kept = f"; pip also changed {', '.join(f'{n} {before[n]} -> {after[n]}' for n in changed)}, left as is" if changed else ""
        raise fail(f"{' '.join(targets)} brings no stoq plugin (no entry point in the 'stoq.plugins' group): "
                   f"refused, and the {len(added)} distribution(s) it installed were removed ({', '.join(added)}){kept}",
                   ExitCode.INSTALL)
    say(f"installed {', '.join(f'{n} {after[n]}' for n in added + changed)}: {len(rows)} plugin(s)")
    show(format, data, rows)
    if any(r["error"] for r in rows):
        raise typer.Exit(int(ExitCode.CONFIG))


def _remove(names: list[str]) -> None:
    if names and pip("uninstall", "--yes", "--disable-pip-version-check", *names) != 0:
        say(f"could not remove {', '.join(names)}: remove them with `{sys.executable} -m pip uninstall`")


@app.command()
def uninstall(name: Annotated[str, typer.Argument(metavar="NAME", help="A plugin name (stoq list) or the distribution that installed it.")],
              format: Annotated[InstallFormat, typer.Option("--format", "-f", help="text or json.")] = InstallFormat.text) -> None:
    """Uninstall the package of a plugin (by plugin or distribution name), listing the plugins it
    removes; stoq itself and its bundled plugins are refused."""
    found = registry()
    entry = found.entries.get(name)
    dist = canonical(entry.distribution) if entry is not None and entry.distribution else canonical(name)
    if dist == canonical(STOQ_DISTRIBUTION):
        what = f"{name!r} is bundled with stoq" if entry is not None else "stoq cannot uninstall itself"
        raise fail(f"{what}: refused (pip uninstall {STOQ_DISTRIBUTION} removes stoq and all its plugins)", ExitCode.USAGE)
    before = installed()
    if dist not in before:
        raise fail(f"no plugin or distribution {name!r} is installed{did_you_mean(name, found.entries)}",
                   ExitCode.NOT_FOUND)
    rows = plugins_of({dist})
    if not rows:  # sqlalchemy, say: stoq needs it, and it is no plugin
        raise fail(f"{name!r} is not a plugin package (it declares no stoq plugin): refused; "
                   f"use pip for other packages", ExitCode.USAGE)
    if pip("uninstall", "--yes", "--disable-pip-version-check", dist) != 0:
        raise fail(f"pip could not uninstall {dist} (its messages are above)", ExitCode.INSTALL)
    say(f"uninstalled {dist} {before[dist]}: {len(rows)} plugin(s) removed")
    show(format, {"removed": {dist: before[dist]}}, rows)
