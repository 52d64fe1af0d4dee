"""Wiring as data: every bundled plugin loads, is well declared, has tests, and the dispatch rules only
name installed plugins. A new plugin without these fails here."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import yara

from helpers import ROOT
from stoq.dispatch import bundled_dispatch_rules
from stoq.plugin import ArchiveError, ArchiverPlugin, ConnectorPlugin, ScanPlugin, SourcePlugin
from stoq.registry import NAME, Registry

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY_POINTS = PYPROJECT["project"]["entry-points"]["stoq.plugins"]
#: The core's own archivers (stoq/archive.py, stoq/archive_pg.py: the engine's fast paths rely on the pack),
#: declared as entry points like any plugin and tested by tests/test_archive.py.
CORE = {name: target for name, target in ENTRY_POINTS.items() if target.startswith("stoq.")}
BUNDLED = {name: target for name, target in ENTRY_POINTS.items() if name not in CORE}
REGISTRY = Registry.discover()


def test_bundled_entry_points_are_exactly_the_plugin_modules() -> None:
    modules = {p.stem for p in (ROOT / "plugins").glob("*.py") if not p.name.startswith("_")}
    modules |= {p.parent.name for p in (ROOT / "plugins").glob("*/__init__.py")}  # a plugin with helpers of its own
    assert {target.split(":")[0].removeprefix("stoq_plugins.") for target in BUNDLED.values()} == modules


def test_the_cores_archivers_are_archiver_plugins() -> None:
    assert sorted(CORE) == ["directory", "none", "pack", "postgres"]
    for name in CORE:
        entry = REGISTRY.entries[name]
        assert entry.error is None and entry.cls is not None and issubclass(entry.cls, ArchiverPlugin)
        assert entry.cls.name == name and entry.cls.__doc__ and entry.cls.summary()


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_each_bundled_plugin_is_declared_tested_and_short(name: str) -> None:
    entry = REGISTRY.entries[name]
    assert entry.error is None and entry.cls is not None
    cls = entry.cls
    assert NAME.match(cls.name) and cls.name == name
    assert re.match(r"^\d+(\.\d+)*$", cls.version)
    assert cls.__doc__ and cls.summary()
    for option, field in cls.Options.model_fields.items():
        assert field.description, f"{name}.{option} has no description"
    if cls.category == "connector":  # a sink needs to be told where: its setup says so
        assert issubclass(cls, ConnectorPlugin)
        with pytest.raises(ValueError, match=rf"{name}\.\w+ is not set"):
            cls().setup()
    elif cls.category == "archiver":  # told where by the setting archive; made without any I/O
        assert issubclass(cls, ArchiverPlugin)
        with pytest.raises(ArchiveError, match=f"archiver {name} needs the setting archive"):
            cls().prepare()
    elif cls.category == "source":  # driven by its command (stoq dirmon)
        assert issubclass(cls, SourcePlugin)
        cls().setup()
    else:
        assert issubclass(cls, ScanPlugin)
        cls().setup()  # the defaults work out of the box
    assert (ROOT / "tests" / "plugins" / f"test_plugin_{name}.py").is_file()
    source = Path(inspect.getsourcefile(cls) or "")  # plugins/NAME.py, or the module of a plugin package
    assert source.is_relative_to(ROOT / "plugins")
    assert len(source.read_text().splitlines()) <= 150, "plugin files stay short: move parsing to a helper"
    package = [] if source.parent == ROOT / "plugins" else sorted(source.parent.glob("*.py"))  # its helpers too
    for module in [source, *package]:
        assert "celery" not in module.read_text().lower(), module


def test_bundled_dispatch_rules_compile_and_name_installed_plugins() -> None:
    rules = yara.compile(filepath=str(bundled_dispatch_rules()))
    named = 0
    for rule in rules:
        spec = dict(rule.meta).get("plugin", "")
        for part in filter(None, (p.strip() for p in spec.split(","))):
            category, _, plugin = part.rpartition(":")
            cls = REGISTRY.get(plugin)
            assert category in ("", cls.category), f"{rule.identifier}: {part} but {plugin} is a {cls.category}"
            named += 1
    assert named >= 5
