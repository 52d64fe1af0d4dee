"""The ``dirmon`` source plugin in process: its options (defaults, bounds, text coerced) and what
``monitor`` builds from them. The monitor itself runs in tests/test_dirmon.py (real processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoq.config import ConfigError
from stoq.filters import FileFilter
from stoq.registry import Registry, make_options


def test_found_through_its_entry_point_as_a_source() -> None:
    cls = Registry.discover().get("dirmon")
    assert cls.category == "source" and cls.__name__ == "DirmonSource"


def test_options_are_typed_and_bounded() -> None:
    cls = Registry.discover().get("dirmon")
    options = make_options(cls, {"settle": "5", "polling": "true", "batch": "10"})
    assert (options.settle, options.polling, options.batch, options.poll_interval) == (5.0, True, 10, 2.0)
    with pytest.raises(ConfigError, match="dirmon.batch"):
        make_options(cls, {"batch": "0"})
    with pytest.raises(ConfigError, match="has no option 'setle'"):
        make_options(cls, {"setle": "5"})


def test_monitor_is_built_from_the_options(tmp_path: Path) -> None:
    cls = Registry.discover().get("dirmon")
    source = cls(make_options(cls, {"polling": "true", "settle": "7", "queue_max": "32"}))
    watcher, monitor = source.monitor([tmp_path], None, None, {"tlp": "red"}, FileFilter(), print,
                                      move_to=tmp_path / "done")
    assert type(watcher.observer).__name__ == "PollingObserver"
    assert watcher.events.maxsize == 32
    assert (monitor.options.settle, monitor.options.move_to, monitor.meta) == (7.0, tmp_path / "done", {"tlp": "red"})
