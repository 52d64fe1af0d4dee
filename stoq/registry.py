"""Plugin discovery through the ``stoq.plugins`` entry-point group.

Bundled plugins register exactly as a third-party package does, so ``pip install`` of a package that
declares ``[project.entry-points."stoq.plugins"] name = "pkg.module:Class"`` is all it takes. A plugin
that fails to load is kept with its error and never hides the others.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from stoq.config import ConfigError, split_list, validation_message
from stoq.plugin import SCAN_CATEGORIES, Category, Plugin, PluginOptions

GROUP = "stoq.plugins"
CATEGORIES: tuple[str, ...] = typing.get_args(Category)
#: What a plugin name may be: it is also a queue name and appears in documents (``extracted_by``).
NAME = re.compile(r"^[a-z0-9_-]{1,64}$")


@dataclass(slots=True)
class PluginEntry:
    """One discovered plugin: its class, or why it could not be loaded."""

    name: str
    target: str
    cls: type[Plugin] | None = None
    error: str | None = None
    dist: Any = None  # the importlib.metadata Distribution that declares it

    @property
    def category(self) -> str:
        return self.cls.category if self.cls is not None else "?"

    @property
    def distribution(self) -> str | None:
        """The name of the package that installed the plugin (read from its metadata on demand:
        parsing every plugin's METADATA costs time a scan would wait for)."""
        return self.dist.name if self.dist is not None else None


class Registry:
    """The plugins installed in this environment, by name."""

    def __init__(self, entries: Mapping[str, PluginEntry]) -> None:
        self.entries = dict(entries)

    @classmethod
    def discover(cls) -> "Registry":
        found: dict[str, PluginEntry] = {}
        for ep in entry_points(group=GROUP):
            entry = PluginEntry(name=ep.name, target=ep.value, dist=ep.dist)
            if ep.name in found:
                found[ep.name].error = f"plugin name {ep.name!r} is declared twice ({found[ep.name].target}, {ep.value})"
                continue
            try:
                loaded = ep.load()
                if not (isinstance(loaded, type) and issubclass(loaded, Plugin)):
                    raise TypeError(f"{ep.value} is not a stoq Plugin class")
                if loaded.name != ep.name:
                    raise TypeError(f"{ep.value} declares name {loaded.name!r}, its entry point says {ep.name!r}")
                if not NAME.match(ep.name):
                    raise TypeError(f"plugin name {ep.name!r} is not lower-case letters, digits, '_' or '-'")
                category = getattr(loaded, "category", None)
                if category not in CATEGORIES:
                    raise TypeError(f"{ep.value} has category {category!r}, not one of {', '.join(CATEGORIES)}")
                entry.cls = loaded
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken third-party plugin (even one calling exit()) must not hide the others
                entry.error = f"{type(exc).__name__}: {exc}"
            found[ep.name] = entry
        return cls(found)

    def get(self, name: str) -> type[Plugin]:
        entry = self.entries.get(name)
        if entry is None:
            raise ConfigError(f"unknown plugin {name!r} (see `stoq list`)")
        if entry.cls is None:
            raise ConfigError(f"plugin {name!r} failed to load: {entry.error}")
        return entry.cls

    def scan_plugins(self) -> list[type[Plugin]]:
        return [e.cls for e in self.entries.values() if e.cls is not None and e.cls.category in SCAN_CATEGORIES]


def path_options(cls: type[Plugin]) -> frozenset[str]:
    """The options of ``cls`` typed as paths (``Path``, ``Path | None``, ``list[Path]``...): the CLI makes
    a relative one absolute where it was written (:func:`stoq.config.load_settings`)."""
    def mentions_path(annotation: Any) -> bool:
        return annotation is Path or any(mentions_path(arg) for arg in typing.get_args(annotation))
    return frozenset(k for k, f in cls.Options.model_fields.items() if mentions_path(f.annotation))


def make_options(cls: type[Plugin], values: Mapping[str, Any]) -> PluginOptions:
    """Validates option values (text is coerced; list fields accept comma-separated text)."""
    prepared: dict[str, Any] = {}
    for key, value in values.items():
        field = cls.Options.model_fields.get(key)
        if field is not None and typing.get_origin(field.annotation) in (list, tuple, set, frozenset):
            value = split_list(value)
        prepared[key] = value
    try:
        return cls.Options.model_validate(prepared)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, cls.name, cls.Options.model_fields)) from exc
