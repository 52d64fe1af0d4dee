"""``stoq workers`` and ``celery -A stoq inspect stoq_plugins`` against two real workers: one with an
extra plugin package installed (``boom``, from a distribution on its PYTHONPATH) serving every queue,
one without it that nevertheless consumes the ``boom`` queue. The operator must see that the second
lacks the plugin and consumes its queue without it. Redis databases 8 and 9 (run under the lock)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from helpers import ROOT, redis_url
from stoq.cli.workers import compare
from stoq.plugin import SCAN_CATEGORIES
from stoq.registry import Registry
from test_cluster import BIN, Cluster, cluster_env, start


def bundled() -> dict[str, str]:
    """The plugins installed with stoq itself: name -> version (the registry's own answer)."""
    return {e.name: e.cls.version for e in Registry.discover().entries.values()
            if e.cls is not None and e.distribution == "stoq-analysis"}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Cluster]]:
    work = tmp_path_factory.mktemp("inspect")
    site = work / "site"  # one good plugin, `boom`, as a distribution of its own
    site.mkdir()
    shutil.copy(ROOT / "tests" / "testplugins" / "stoq_testplugins.py", site)
    info = site / "stoq_boom-2.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stoq-boom\nVersion: 2.5\n")
    (info / "entry_points.txt").write_text("[stoq.plugins]\nboom = stoq_testplugins:Boom\n")
    env = cluster_env(work, site, (8, 9), "stoq_cluster_inspect")
    (work / "a").mkdir()
    (work / "b").mkdir()
    workers = [start(work / "a", env, "-c", "1")]
    try:
        without = env | {"PYTHONPATH": str(work / "empty")}
        workers.append(start(work / "b", without, "-c", "1", "-Q", "yara,boom", fresh=False))
        yield workers[0], workers[1]
    finally:
        for worker in workers:
            worker.stop()


def test_stoq_workers_shows_the_worker_that_lacks_a_plugin(two_workers: tuple[Cluster, Cluster]) -> None:
    a, b = two_workers
    host = socket.gethostname()
    name_a, name_b = f"stoq-a@{host}", f"stoq-b@{host}"
    proc = a.stoq("workers", "--format", "json", "--timeout", "3")
    assert proc.returncode == 4, proc.stderr
    got = json.loads(proc.stdout)
    assert sorted(got["workers"]) == [name_a, name_b]
    wa, wb = got["workers"][name_a], got["workers"][name_b]
    assert wa["plugins"] == dict(sorted((bundled() | {"boom": "1"}).items()))
    assert wb["plugins"] == dict(sorted(bundled().items()))
    assert wb["queues"] == ["boom", "yara"]
    assert wb["lacks"] == {"boom": [name_a]} and wb["queues_without_plugin"] == ["boom"]
    assert wa["lacks"] == {} and wa["queues_without_plugin"] == [] and wa["differs"] == {}
    # a worker without -Q consumes stoq's own queues and every plugin's
    scan_plugins = {e.name for e in Registry.discover().entries.values()
                    if e.cls is not None and e.distribution == "stoq-analysis" and e.category in SCAN_CATEGORIES}
    assert set(wa["queues"]) >= scan_plugins | {"boom", "stoq", "stoq-collect"}
    assert got["unserved_queues"] == [] and got["agree"] is False

    proc = a.stoq("workers", "--timeout", "3")
    assert proc.returncode == 4
    lines = proc.stdout.decode().splitlines()
    assert f"  LACKS boom (installed on {name_a})" in lines
    assert "  CONSUMES boom WITHOUT ITS PLUGIN (its tasks fail here)" in lines
    assert lines[-1] == "2 worker(s); they differ (above)"


def test_celery_inspect_answers_the_same_command(two_workers: tuple[Cluster, Cluster]) -> None:
    a, _ = two_workers
    proc = subprocess.run([str(BIN / "celery"), "-A", "stoq", "inspect", "stoq_plugins", "--json", "-t", "3"],
                          env=a.env, cwd=a.work, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = json.loads(proc.stdout)
    host = socket.gethostname()
    assert sorted(replies) == [f"stoq-a@{host}", f"stoq-b@{host}"]
    boom = replies[f"stoq-a@{host}"]["plugins"]["boom"]
    assert boom == {"version": "1", "category": "worker", "distribution": "stoq-boom",
                    "distribution_version": "2.5", "error": None}
    assert "boom" not in replies[f"stoq-b@{host}"]["plugins"]


def test_no_worker_is_exit_code_4(tmp_path: Path) -> None:
    env = cluster_env(tmp_path, tmp_path, (8, 9), "unused") | {"STOQ_BROKER_URL": redis_url(5)}
    proc = subprocess.run([str(BIN / "stoq"), "workers", "-t", "0.5"], env=env, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (4, b"")
    assert proc.stderr.decode() == f"stoq: no worker answered within 0.5 s on {redis_url(5)}\n"


def test_compare_names_versions_that_differ_and_queues_nobody_serves() -> None:
    def report(plugins: dict[str, str], queues: list[str]) -> dict[str, object]:
        return {"stoq": "0.1.0", "queues": queues, "plugins": {
            n: {"version": v, "category": "worker", "distribution": "x", "distribution_version": v, "error": None}
            for n, v in plugins.items()}}

    found = compare({"w1": report({"yara": "1.0", "x": "2"}, ["yara"]), "w2": report({"yara": "1.1"}, ["yara"])})
    assert found["workers"]["w1"]["differs"] == {"yara": {"1.0": ["w1"], "1.1": ["w2"]}}
    assert found["workers"]["w2"]["differs"] == {"yara": {"1.0": ["w1"], "1.1": ["w2"]}}
    assert found["workers"]["w2"]["lacks"] == {"x": ["w1"]}
    assert found["unserved_queues"] == ["x"] and found["agree"] is False
    assert compare({"w1": report({"yara": "1.0"}, ["yara"])})["agree"] is True
