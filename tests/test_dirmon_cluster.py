"""``stoq dirmon`` against a real cluster: a ``celery -A stoq worker``, Redis (databases 4 and 5) and
PostgreSQL (database ``stoq_dirmon``; run under the services lock). The ledger lives in the cluster's
store; the workers store the documents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from test_cluster import BIN, Cluster, running_cluster
from test_dirmon import sha, wait_for, write_files

DB = "stoq_dirmon"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory.mktemp("dirmon-cluster"), testplugins_site, (4, 5), DB)


def query(cluster: Cluster, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(cluster.env["STOQ_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://"))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]
    finally:
        engine.dispose()


def test_dirmon_submits_to_the_cluster_once_per_file(cluster: Cluster, tmp_path: Path) -> None:
    watched, done = tmp_path / "in", tmp_path / "done"
    expected = set(write_files(watched, 10, "early").values())  # there before it starts
    log = tmp_path / "dirmon.log"
    proc = subprocess.Popen([str(BIN / "stoq"), "dirmon", str(watched), "--meta", "source=dropbox",
                             "--move-to", str(done), "--report-every", "0.5"], env=cluster.env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    try:
        wait_for(lambda: b"dirmon: watching" in log.read_bytes() or proc.poll() is not None, "dirmon to start", 60)
        assert b"(inotify, cluster)" in log.read_bytes(), log.read_text()
        expected |= set(write_files(watched / "sub", 40, "late").values())
        (watched / "late.bin").write_bytes(b"x" * 100)
        expected.add(sha(b"x" * 100))

        def moved() -> bool:
            return sum(len(files) for _, _, files in os.walk(done)) == 51
        wait_for(moved, "51 files moved once stored")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()
    counts = dict(query(cluster, "SELECT root_sha256, count(*) FROM scans GROUP BY root_sha256"))
    assert set(counts) == expected and set(counts.values()) == {1}
    assert query(cluster, "SELECT state, count(*) FROM dirmon_ledger GROUP BY state") == [("stored", 51)]
    assert query(cluster, "SELECT DISTINCT source->'meta'->>'source' FROM scans") == [("dropbox",)]
    assert not [f for _, _, f in os.walk(watched) if f]


def test_submit_meta_reaches_the_stored_document(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_bytes(b"with meta\n")
    got = cluster.stoq("submit", str(tmp_path / "m.txt"), "--meta", "tlp=RED", "--meta", "case=9")
    assert got.returncode == 0, got.stderr
    (doc,) = [json.loads(line) for line in got.stdout.splitlines()]
    assert doc["source"] == {"path": str(tmp_path / "m.txt"), "meta": {"tlp": "red", "case": "9"}}
    assert json.loads(cluster.stoq("results", doc["scan_id"], "--format", "jsonl").stdout)["source"] == doc["source"]


def test_the_topology_script_starts_dirmon_when_asked(cluster: Cluster, tmp_path: Path) -> None:
    """scripts/stoq-cluster with STOQ_DIRMON_DIRS starts dirmon beside its workers (here one worker on a
    queue nobody uses: the module's worker scans), lists it in `status`, stops it with `stop`."""
    watched = tmp_path / "watched"
    watched.mkdir()
    script = Path(__file__).resolve().parents[1] / "scripts" / "stoq-cluster"
    env = cluster.env | {"STOQ_CLUSTER_GROUPS": "stoq-test-unused", "STOQ_CLUSTER_DIR": str(tmp_path / "run"),
                         "STOQ_BIN": str(BIN), "STOQ_CLUSTER_USER": "root" if os.geteuid() == 0 else "nobody",
                         "STOQ_DIRMON_DIRS": str(watched), "STOQ_DIRMON_ARGS": "--meta via=script --report-every 0.5"}
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, timeout=120)
    assert started.returncode == 0, started.stderr
    log = tmp_path / "run" / "dirmon.log"
    try:
        wait_for(lambda: log.exists() and b"dirmon: watching" in log.read_bytes(), "dirmon to start", 60)
        expected = set(write_files(watched, 3, "s").values())

        def stored() -> set[object]:
            return {r[0] for r in query(cluster, "SELECT root_sha256 FROM scans WHERE source->'meta'->>'via' = 'script'")}
        wait_for(lambda: stored() == expected, "3 documents")
        status = subprocess.run([str(script), "status"], env=env, capture_output=True, timeout=60)
        assert b"dirmon running" in status.stdout
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60)
    wait_for(lambda: b"(stopping)" in log.read_bytes(), "dirmon to stop", 60)
    assert not (tmp_path / "run" / "dirmon.pid").exists()
