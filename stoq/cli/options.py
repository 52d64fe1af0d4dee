"""Settings as ``scan`` and ``submit`` read them: ``-o PLUGIN.OPTION=VALUE`` checked against the
installed plugins (a typo must not pass), and path options made absolute where the user wrote them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stoq.cli import ExitCode, fail, say
from stoq.config import ConfigError, Settings, did_you_mean, load_settings, parse_plugin_options
from stoq.registry import Registry, path_options


def command_line_settings(config: Path | None, overrides: dict[str, Any], options: list[str] | None,
                          warn_unselected: bool = True) -> Settings:
    """The settings of every layer; ``-o`` options for a plugin that is not installed refuse the command
    (exit code 2, with the closest name), those for an installed plugin that this command will not run
    are said once, as a warning. A relative path given to a path option is made absolute (see
    :func:`stoq.config.load_settings`): in a cluster, the workers see the file the user meant.
    ``warn_unselected`` False: no warning for a plugin the command does not select."""
    registry = Registry.discover()

    def paths_of(plugin: str) -> frozenset[str]:
        entry = registry.entries.get(plugin)
        return path_options(entry.cls) if entry is not None and entry.cls is not None else frozenset()

    try:
        given = parse_plugin_options(options or [])
        settings = load_settings(config, overrides=overrides, plugin_options=given, path_options=paths_of)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    for plugin, values in given.items():
        shown = ", ".join(f"-o {plugin}.{option}" for option in values)
        entry = registry.entries.get(plugin)
        if entry is None:
            raise fail(f"{shown}: no plugin {plugin!r} is installed{did_you_mean(plugin, registry.entries)} "
                       "(see `stoq list`)", ExitCode.USAGE)
        if not warn_unselected:  # `stoq shell`: any plugin may be run by hand
            continue
        unused = unselected(entry.category, plugin, settings)
        if unused:
            say(f"warning: {shown}: {unused}; the option has no effect")
    return settings


def unselected(category: str, name: str, settings: Settings) -> str | None:
    """Why a plugin will not run in a command with these settings, or None when it may: a worker runs
    when it is in the worker set (``--workers``, else the ``workers`` setting and its default), a
    connector when ``--connectors`` names it, an archiver when ``--archiver`` names it; carvers,
    extractors, decoders and readers run through dispatch. (A dispatch rule of the user's may still name
    an unselected worker: not warned of.)"""
    if category == "worker" and name not in settings.workers:
        return f"plugin {name!r} is not selected (--workers {name})"
    if category == "connector" and name not in settings.connectors:
        return f"connector {name!r} is not selected (--connectors {name})"
    if category == "archiver" and name != settings.archiver:
        return f"archiver {name!r} is not selected (--archiver {name})"
    return None


__all__ = ["command_line_settings", "unselected"]
