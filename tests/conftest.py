"""Shared fixtures: the test plugins, isolated settings, the ``stoq`` command."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from helpers import ROOT, TOOL_PACKAGES
from stoq import model as stoq_model

# Every document stoq assembles during the tests, in this process or in any stoq or celery process
# the tests start (they inherit it), is checked against the contract where it is assembled.
os.environ["STOQDEV_CHECK_DOCUMENTS"] = str(ROOT / "docs" / "scan-document.schema.json")
stoq_model.CHECK_DOCUMENTS = os.environ["STOQDEV_CHECK_DOCUMENTS"]  # in case stoq.model was imported before
# No default worker set in the tests (every stoq and celery process they start inherits this): each test
# names the workers it runs; tests/test_defaults.py tests the default set itself.
os.environ["STOQDEV_DEFAULT_WORKERS"] = "none"
# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT
# ignored, and so would every stoq process it starts: stoq leaves an ignored SIGINT ignored, as a
# background job must, and the tests that send SIGINT would see nothing happen. The processes the tests
# start get the default disposition back (a Python handler here becomes SIG_DFL across exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)



@functools.cache
def plugin_tools() -> frozenset[str]:
    """The programs the installed plugins declare (``Plugin.tools``)."""
    from stoq.registry import Registry

    return frozenset(t.command for e in Registry.discover().entries.values() if e.cls for t in e.cls.tools)


def missing_tools(commands: tuple[str, ...]) -> list[str]:
    """The commands not found on PATH (the tests run them as references) or, for a program a plugin
    runs, where the plugins look (``stoq.plugin.tool_path()``)."""
    from stoq.plugin import tool_path

    return [c for c in commands
            if shutil.which(c) is None or (c in plugin_tools() and shutil.which(c, path=tool_path()) is None)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``@pytest.mark.tools("7z", ...)``: the test is skipped, naming the packages to install, when one
    of these programs is missing. CI installs them all (.ci/apt-packages), so there they run."""
    for mark in item.iter_markers("tools"):
        missing = missing_tools(mark.args)
        if missing:
            packages = sorted({TOOL_PACKAGES.get(c, c) for c in missing})
            pytest.skip(f"needs {', '.join(missing)}: apt-get install {' '.join(packages)}")


@pytest.fixture(scope="session")
def testplugins_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the misbehaving test plugins installed as a distribution (dist-info with
    entry points), put on sys.path for in-process tests; subprocess tests add it to PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(ROOT / "tests" / "testplugins" / "stoq_testplugins.py", site)
    info = site / "stoq_testplugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stoq-testplugins\nVersion: 1.0\n")
    shutil.copy(ROOT / "tests" / "testplugins" / "entry_points.txt", info / "entry_points.txt")
    sys.path.insert(0, str(site))
    return site


@pytest.fixture()
def stoq_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a ``stoq`` subprocess: private archive, SQLite store and config dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") or k == "STOQ_TOOL_PATH"}
    env.update({
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "STOQ_ARCHIVE": str(tmp_path / "archive"),
        "STOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'stoq.db'}",
    })
    return env


@pytest.fixture()
def run_stoq(stoq_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Runs the installed ``stoq`` command; returns the completed process (stdout/stderr as bytes)."""
    exe = Path(sys.executable).parent / "stoq"

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        full = dict(stoq_env, **(env or {}))
        return subprocess.run([str(exe), *args], capture_output=True, env=full, cwd=tmp_path, timeout=timeout)

    return run

