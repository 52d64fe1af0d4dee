"""``stoq completion bash|zsh|fish``: the shell's completion script for ``stoq``, and the completion of
plugin names after ``--workers`` and ``--connectors``.

The script calls ``stoq`` back with ``_STOQ_COMPLETE=complete_<shell>`` (Typer's form of Click's
protocol, which ``typer.main`` answers in every Typer command), so what it
offers is what this installation has: its commands, options and installed plugins. Typer's own
``--install-completion`` stays off: it edits the user's shell start-up files, where printing the script
lets the user put it where their shell looks (docs/cli.md).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from typer.completion import completion_init, get_completion_script

from stoq.cli import app

# Typer's completion classes (rich help in zsh and fish, the ``complete_<shell>`` instruction that
# typer.main answers); registering them is a dictionary update.
completion_init()

#: The environment variable through which the script asks ``stoq`` for completions.
COMPLETE_VAR = "_STOQ_COMPLETE"


class Shell(str, Enum):
    """Shells whose completion script ``stoq completion`` prints."""

    bash = "bash"
    zsh = "zsh"
    fish = "fish"


def plugin_names(categories: frozenset[str] | None = None) -> list[str]:
    """Installed plugins (those of ``categories``, or every one that loads), sorted."""
    from stoq.registry import Registry

    return sorted(name for name, entry in Registry.discover().entries.items()
                  if entry.cls is not None and (categories is None or entry.cls.category in categories))


def complete_list(incomplete: str, names: list[str]) -> list[str]:
    """Completions of a comma-separated list whose last item is being typed: ``yara,pe`` gives
    ``yara,peinfo``; names already in the list are not offered again."""
    done, _, last = incomplete.rpartition(",")
    given = set(done.split(",")) if done else set()
    head = done + "," if done else ""
    return [head + name for name in names if name.startswith(last) and name not in given]


def complete_scan_plugins(incomplete: str) -> list[str]:
    """``--workers``: the installed scan plugins."""
    from stoq.plugin import SCAN_CATEGORIES

    return complete_list(incomplete, plugin_names(frozenset(SCAN_CATEGORIES)))


def complete_connectors(incomplete: str) -> list[str]:
    """``--connectors``: the installed connector plugins."""
    return complete_list(incomplete, plugin_names(frozenset({"connector"})))


def complete_any_plugin(incomplete: str) -> list[str]:
    """``stoq list PLUGIN``: every installed plugin."""
    return [name for name in plugin_names() if name.startswith(incomplete)]


def complete_plugin_option(incomplete: str) -> list[str]:
    """``-o PLUGIN.OPTION=VALUE``: ``PLUGIN.`` first, then ``PLUGIN.OPTION=`` from the plugin's
    typed options (and ``time_limit``, which every plugin takes)."""
    from stoq.registry import Registry

    if "=" in incomplete:
        return []
    plugin, dot, option = incomplete.partition(".")
    entries = Registry.discover().entries
    if not dot:
        return [f"{name}." for name in sorted(entries) if name.startswith(plugin) and entries[name].cls is not None]
    entry = entries.get(plugin)
    if entry is None or entry.cls is None:
        return []
    options = [*entry.cls.Options.model_fields, "time_limit"]
    return [f"{plugin}.{name}=" for name in dict.fromkeys(options) if name.startswith(option)]


@app.command()
def completion(shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish.")]) -> None:
    """Print the shell completion script for bash, zsh or fish (see docs/cli.md to install it)."""
    typer.echo(get_completion_script(prog_name="stoq", complete_var=COMPLETE_VAR, shell=shell.value))
