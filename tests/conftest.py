"""Shared fixtures: the test plugins, isolated settings, the ``stoq`` command."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import AMQP_VHOST, REDIS_PORT_VAR, ROOT, TOOL_PACKAGES, WORKER_SUFFIX, XDIST_WORKER, shared_lock
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


# ------------------------------------------------------------------------------ parallel runs (xdist)
# `make test` runs `pytest -n 3 --dist loadfile` (README.md). Each xdist worker but gw0 gets a Redis
# and a RabbitMQ virtual host of its own here (tests/helpers.py: redis_url, amqp_url, database);
# two tests that cannot run at the same time as others hold locks (pytest_runtest_protocol below).

#: The modules that take longest (a serial run's durations), sent to the workers first so that the last
#: module to finish is a short one; the others follow in their usual order.
SLOWEST_FIRST = (
    "test_durability_services.py", "test_cluster.py", "test_durability.py", "test_dirmon.py", "test_blame.py",
    "test_durability_kills.py", "test_cli_results_search.py", "test_cli.py", "test_ledger_sources.py",
    "test_cluster_cli.py", "test_fuzz.py", "test_tasks.py", "test_web_api.py", "test_cli_interrupt.py",
    "test_cli_install.py", "test_metrics.py", "test_cluster_intel.py", "test_cluster_inspect.py", "test_intake.py",
    "test_tools_missing.py", "test_exports.py", "test_cli_results.py", "test_intel_service.py", "test_web_ui.py",
    "test_cluster_exif_clamav.py", "test_cli_terminal.py", "test_dirmon_cluster.py",
)
#: Modules whose every test runs ``alone`` under xdist: the faults made for real (services restarted or
#: cut, kill -9 at a seeded moment, 20,000 files through one worker) assert on timing and ordering
#: that the load of other workers on the same cores upsets (seen: a restart that came after the last
#: file, a kill that landed mid-publish and left a --no-wait client waiting).
ALONE_MODULES = ("test_durability_services.py", "test_durability_kills.py")


def _kill_pidfile(pidfile: Path) -> None:
    """SIGKILL to the process whose pid ``pidfile`` holds, if it still runs."""
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def _private_redis(config: pytest.Config) -> None:
    """A ``redis-server`` of this worker's own (no persistence) on a free port, in REDIS_PORT_VAR;
    stopped when the worker's session ends."""
    import redis

    from tcpgate import free_port

    where = Path(tempfile.mkdtemp(prefix=f"stoq-redis-{XDIST_WORKER}-"))
    config.add_cleanup(lambda: shutil.rmtree(where, ignore_errors=True))
    for _ in range(5):  # the free port may be taken before redis-server binds it
        port = free_port()
        pidfile = where / f"redis-{port}.pid"
        # Daemonized: not a child of this process (tests/plugins/test_isolate.py counts this process's
        # children); stopped by SHUTDOWN, or by the pid in its pidfile.
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", str(where), "--logfile", str(where / "redis.log"), "--daemonize", "yes",
                        "--pidfile", str(pidfile)], stdin=subprocess.DEVNULL, check=False, timeout=30)
        deadline = time.monotonic() + 20
        answered = False
        while not answered and time.monotonic() < deadline:
            try:
                answered = bool(redis.Redis(port=port, socket_timeout=2).ping())
            except redis.RedisError:
                time.sleep(0.05)
        if not answered:
            _kill_pidfile(pidfile)
            continue

        def stop(port: int = port, pidfile: Path = pidfile) -> None:
            try:
                redis.Redis(port=port, socket_timeout=10).shutdown(nosave=True)
            except redis.RedisError:
                pass
            _kill_pidfile(pidfile)

        config.add_cleanup(stop)
        os.environ[REDIS_PORT_VAR] = str(port)
        return
    raise RuntimeError(f"xdist worker {XDIST_WORKER}: its redis-server did not start (log: {where / 'redis.log'})")


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=120)


def _private_vhost(config: pytest.Config) -> None:
    """The RabbitMQ virtual host AMQP_VHOST, made empty for this worker (guest may use it); deleted when
    the worker's session ends. Nothing when rabbitmqctl is missing (the RabbitMQ tests then fail as in a
    serial run without RabbitMQ)."""
    if shutil.which("rabbitmqctl") is None:
        return
    with shared_lock("rabbitmq"):
        _rabbitmqctl("delete_vhost", AMQP_VHOST)  # one a killed run left
        made = _rabbitmqctl("add_vhost", AMQP_VHOST)
        assert made.returncode == 0, made.stderr
        allowed = _rabbitmqctl("set_permissions", "-p", AMQP_VHOST, "guest", ".*", ".*", ".*")
        assert allowed.returncode == 0, allowed.stderr

    def delete() -> None:
        with shared_lock("rabbitmq"):
            _rabbitmqctl("delete_vhost", AMQP_VHOST)

    config.add_cleanup(delete)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rabbitmq(exclusive=False): uses the RabbitMQ on 127.0.0.1:5672 (helpers."
                            "amqp_url); exclusive: restarts it, so no test using it runs meanwhile (xdist)")
    config.addinivalue_line("markers", "alone: under xdist, no test of another worker runs meanwhile (it installs into "
                            "the venv, or its timing cannot bear the load of other workers)")
    if WORKER_SUFFIX and not os.environ.get(REDIS_PORT_VAR):
        _private_redis(config)
        _private_vhost(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Under xdist, across the workers: a test marked ``alone`` runs while no other test does (every
    test holds the lock ``alone`` shared, such a test exclusive), and one marked
    ``rabbitmq(exclusive=True)`` runs while no other test marked ``rabbitmq`` does."""
    if not XDIST_WORKER:
        yield
        return
    rabbit = item.get_closest_marker("rabbitmq")
    with shared_lock("alone", exclusive=item.get_closest_marker("alone") is not None):
        if rabbit is None:
            yield
        else:
            with shared_lock("rabbitmq", exclusive=rabbit.kwargs.get("exclusive", False)):
                yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (--no-loadscope-reorder), the slowest modules first (SLOWEST_FIRST); stable otherwise.
    The tests of ALONE_MODULES are marked ``alone``."""
    for item in items:
        if item.path.name in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)
    if XDIST_WORKER:
        rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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

