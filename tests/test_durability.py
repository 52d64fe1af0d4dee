"""Durability (issue 15): faults made for real (Redis flushed, a worker's main process killed, a plugin
queue nobody serves, the client losing Redis), and the ledger that keeps every submitted file: each
ends with exactly one stored document, no duplicate rows, and no ``timeout`` the fault did not cause."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from sqlalchemy import create_engine, text

from helpers import BENCH_RULES, redis_port, validate
from tcpgate import Gate
from test_cluster import BIN, cluster_env, fresh_database, start

pytestmark = [pytest.mark.durability, pytest.mark.postgres]

DB = "stoq_durability"
YARA = ("--workers", "yara", "-o", f"yara.rules={BENCH_RULES}")


@pytest.fixture()
def env(tmp_path: Path, testplugins_site: Path) -> Iterator[dict[str, str]]:
    """A fresh migrated database; a short recovery bound."""
    fresh_database(DB)
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_RECOVER_AFTER": "3", "STOQ_MAX_ATTEMPTS": "3"}
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    yield env


def small_files(where: Path, count: int) -> list[Path]:
    where.mkdir()
    files = []
    for i in range(count):
        f = where / f"f{i:03}.txt"
        f.write_bytes(f"small file number {i}\n".encode())
        files.append(f)
    return files


def query(env: dict[str, str], sql: str) -> list[Any]:
    engine = create_engine(env["STOQ_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def wait_finished(env: dict[str, str], count: int, timeout: float = 40) -> None:
    """Until the ledger holds ``count`` finished scans (and nothing pending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = dict(query(env, "SELECT state, count(*) FROM scan_ledger GROUP BY state"))
        if states.get("finished") == count and not states.get("pending"):
            return
        time.sleep(0.5)
    raise AssertionError(f"ledger after {timeout} s: {states}")


def assert_stored_once(env: dict[str, str], ids: list[str], files: list[Path]) -> None:
    """Each id has one document, of its file, with yara's answer and no error; no duplicate rows."""
    assert sorted(r[0] for r in query(env, "SELECT scan_id FROM scans")) == sorted(ids)
    roots = dict(query(env, "SELECT scan_id, root_sha256 FROM scans"))
    assert sorted(roots.values()) == sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert query(env, "SELECT count(*), count(DISTINCT (scan_id, payload_id, plugin)) FROM plugin_results") == [
        (len(ids), len(ids))]
    assert query(env, "SELECT count(*) FROM scan_payloads") == [(len(ids),)]
    assert query(env, "SELECT count(*) FROM scan_errors") == [(0,)]


def test_redis_flushed_mid_run_loses_no_file(env: dict[str, str], tmp_path: Path) -> None:
    """The scans are begun (their yara tasks wait in the broker), then the broker's and the state's
    Redis databases are flushed: the sweeper publishes them again from the ledger."""
    files = small_files(tmp_path / "in", 24)
    publisher = start(tmp_path, env, "-c", "1", "-Q", "stoq,stoq-collect")
    yara = None
    try:
        got = publisher.stoq("submit", *map(str, files), *YARA, "--no-wait", timeout=60)
        assert got.returncode == 0, got.stderr
        ids = got.stdout.decode().split()
        assert len(ids) == len(files)
        assert query(env, "SELECT state, attempts, count(*) FROM scan_ledger GROUP BY state, attempts") == [
            ("pending", 1, len(files))]
        for url in (env["STOQ_BROKER_URL"], env["STOQ_RESULT_BACKEND"]):
            redis.Redis.from_url(url).flushdb()
        (tmp_path / "yara").mkdir()
        yara = start(tmp_path / "yara", env, "-c", "1", "-Q", "yara", fresh=False)
        wait_finished(env, len(files))
        assert_stored_once(env, ids, files)
        # Every scan was lost once and published again once.
        assert query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts") == [(2, len(files))]
        assert "published again" in publisher.log.read_text()
    finally:
        publisher.stop()
        if yara is not None:
            yara.stop()


def pool_of(pid: int) -> list[int]:
    """The child processes of ``pid`` (its prefork pool)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def test_a_worker_killed_holding_a_publish_loses_no_file(env: dict[str, str], tmp_path: Path) -> None:
    """``kill -9`` of the worker's main process (and its pool, as a crashed machine) right after it
    takes a ``stoq.publish``: the message stays unacked in Redis for the visibility timeout (6 h); the
    ledger publishes it again once a worker is back."""
    files = small_files(tmp_path / "in", 16)
    first = start(tmp_path, env, "-c", "1")
    client = subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, files), *YARA, "--no-wait"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        deadline = time.monotonic() + 30
        while "stoq.publish[" not in first.log.read_text():
            assert time.monotonic() < deadline, first.log.read_text()
            time.sleep(0.005)
        pool = pool_of(first.worker.pid)
        os.kill(first.worker.pid, signal.SIGKILL)
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        first.worker.wait()
        (tmp_path / "again").mkdir()
        second = start(tmp_path / "again", env, "-c", "1", fresh=False)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        ids = out.decode().split()
        assert len(ids) == len(files)
        wait_finished(env, len(files))
        assert_stored_once(env, ids, files)
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] kill -9 holding a publish: {len(files)} submitted, {len(ids)} stored; attempts {attempts}")
    finally:
        client.kill()
        if second is not None:
            second.stop()


def test_the_sweeper_keeps_the_answers_that_arrived(env: dict[str, str], tmp_path: Path) -> None:
    """The issue's reproduction: peinfo's queue is not served, yara's is. The sweeper closes the wave
    with yara's answers kept (the embedded answer, exactly) and a ``timeout`` for peinfo alone."""
    files = small_files(tmp_path / "in", 3)
    c = start(tmp_path, env | {"STOQ_SWEEP_AFTER": "2"}, "-c", "1", "-Q", "stoq,stoq-collect,yara")
    try:
        args = ("--workers", "yara,peinfo", "-o", f"yara.rules={BENCH_RULES}", "--format", "json")
        got = c.stoq("submit", *map(str, files), *args, timeout=60)
        assert got.returncode == 1, got.stderr  # plugin errors: peinfo's timeouts
        docs = json.loads(got.stdout)
        embedded = json.loads(c.stoq("scan", *map(str, files), "--workers", "yara", "-o", f"yara.rules={BENCH_RULES}",
                                     "--format", "json", "--no-store", STOQ_BROKER_URL="",
                                     STOQ_ARCHIVE=str(tmp_path / "a")).stdout)
        assert len(docs) == 3
        for doc, alone in zip(docs, embedded):
            validate(doc)
            assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("peinfo", "timeout")]
            assert doc["results"][0]["workers"] == alone["results"][0]["workers"]
            assert "yara" in doc["results"][0]["workers"]
        assert query(env, "SELECT plugin, count(*) FROM plugin_results GROUP BY plugin") == [("yara", 3)]
    finally:
        c.stop()


def test_results_says_pending_then_finished(env: dict[str, str], tmp_path: Path) -> None:
    """``stoq results ID`` of a submitted scan: pending (exit code 8, since when, attempts) while its
    plugin's queue is not served, its document once it is."""
    (sample,) = small_files(tmp_path / "in", 1)
    c = start(tmp_path, env | {"STOQ_SWEEP_AFTER": "120"}, "-c", "1", "-Q", "stoq,stoq-collect")
    yara = None
    try:
        got = c.stoq("submit", str(sample), *YARA, "--no-wait")
        assert got.returncode == 0, got.stderr
        (scan_id,) = got.stdout.decode().split()
        pending = c.stoq("results", scan_id)
        assert pending.returncode == 8, pending.stderr
        status = json.loads(pending.stdout)
        assert (status["scan_id"], status["state"], status["attempts"], status["error"]) == (scan_id, "pending", 1, None)
        assert f"scan {scan_id} is pending since {status['submitted_at']}" in pending.stderr.decode()
        time.sleep(4)  # past recover_after: in progress (its state is in Redis), so not published again
        assert json.loads(c.stoq("results", scan_id).stdout)["attempts"] == 1
        (tmp_path / "yara").mkdir()
        yara = start(tmp_path / "yara", env, "-c", "1", "-Q", "yara", fresh=False)
        wait_finished(env, 1)
        done = c.stoq("results", scan_id, "--format", "json")
        assert done.returncode == 0, done.stderr
        (doc,) = json.loads(done.stdout)
        assert doc["scan_id"] == scan_id and "yara" in doc["results"][0]["workers"]
    finally:
        c.stop()
        if yara is not None:
            yara.stop()


def test_a_lost_scan_fails_after_its_attempts(env: dict[str, str], tmp_path: Path) -> None:
    """A scan whose state vanishes on every publish (its Redis flushed each time) is given up after
    ``max_attempts`` publishes: failed, with why (exit code 9)."""
    (sample,) = small_files(tmp_path / "in", 1)
    c = start(tmp_path, env | {"STOQ_MAX_ATTEMPTS": "1"}, "-c", "1", "-Q", "stoq,stoq-collect")
    try:
        got = c.stoq("submit", str(sample), *YARA, "--no-wait")
        assert got.returncode == 0, got.stderr
        (scan_id,) = got.stdout.decode().split()
        for url in (env["STOQ_BROKER_URL"], env["STOQ_RESULT_BACKEND"]):
            redis.Redis.from_url(url).flushdb()
        deadline = time.monotonic() + 30
        while query(env, "SELECT state FROM scan_ledger") != [("failed",)]:
            assert time.monotonic() < deadline, c.log.read_text()[-3000:]
            time.sleep(0.5)
        failed = c.stoq("results", scan_id)
        assert failed.returncode == 9, failed.stderr
        assert json.loads(failed.stdout)["error"].startswith("lost: no document after 1 publish(es)")
        assert query(env, "SELECT count(*) FROM scans") == [(0,)]
    finally:
        c.stop()


def test_a_waiting_client_that_loses_redis_waits_on_the_ledger(env: dict[str, str], tmp_path: Path) -> None:
    """``stoq submit`` (waiting) whose Redis goes away after sending keeps waiting on the ledger and
    prints every document, instead of exiting 4 ("lost the cluster")."""
    files = small_files(tmp_path / "in", 3)
    c = start(tmp_path, env, "-c", "1", "-Q", "stoq,stoq-collect")
    proxy = Gate(redis_port())
    yara = None
    try:
        backend = f"redis://127.0.0.1:{proxy.port}/{env['STOQ_RESULT_BACKEND'].rsplit('/', 1)[1]}"
        client = subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, files), *YARA, "--format", "json"],
                                  env=env | {"STOQ_RESULT_BACKEND": backend}, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while query(env, "SELECT count(*) FROM scan_ledger") != [(3,)]:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)  # its publish sent; now blocked on its notification list
        proxy.close()
        (tmp_path / "yara").mkdir()
        yara = start(tmp_path / "yara", env, "-c", "1", "-Q", "yara", fresh=False)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert "waiting on the ledger" in err.decode()
        docs = json.loads(out)
        assert [d["source"]["path"] for d in docs] == [str(f) for f in files]
        assert all("yara" in d["results"][0]["workers"] and not d["errors"] for d in docs)
    finally:
        proxy.close()
        c.stop()
        if yara is not None:
            yara.stop()


def recorded_scan(env: dict[str, str], client: subprocess.Popen[bytes]) -> str:
    """The scan id the client recorded in the ledger (before it published it)."""
    deadline = time.monotonic() + 30
    while not (rows := query(env, "SELECT scan_id FROM scan_ledger")):
        assert time.monotonic() < deadline and client.poll() is None, client.stderr.read() if client.stderr else ""
        time.sleep(0.1)
    (scan_id,) = [row[0] for row in rows]
    return str(scan_id)


def test_a_no_wait_client_whose_publisher_died_before_telling_it_sees_its_scan_begun(env: dict[str, str],
                                                                                     tmp_path: Path) -> None:
    """A publisher killed after it committed its scans' states and before it told the ``--no-wait``
    client that it accepted them leaves the client nothing to pop (the scans go on: the sweeper sends
    their wave). The client then reads their state itself (``client.RECHECK``) and prints their ids.
    That instant is made by hand here: no worker serves ``stoq``, and the test writes the scan's state
    key, as that publisher's commit did (what a seeded kill found under load, once in a run)."""
    from stoq.tasks.client import RECHECK
    from stoq.tasks.scans import scan_key

    (sample,) = small_files(tmp_path / "in", 1)
    client = subprocess.Popen([str(BIN / "stoq"), "submit", str(sample), *YARA, "--no-wait"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        scan_id = recorded_scan(env, client)
        time.sleep(RECHECK + 1)
        assert client.poll() is None  # nothing told it yet
        redis.Redis.from_url(env["STOQ_RESULT_BACKEND"]).set(scan_key(scan_id), b"{}", ex=60)
        out, err = client.communicate(timeout=RECHECK + 20)
        assert client.returncode == 0, err
        assert out.decode().split() == [scan_id]
    finally:
        client.kill()


def test_a_waiting_client_whose_collector_died_before_handing_over_gets_the_stored_document(
        env: dict[str, str], tmp_path: Path) -> None:
    """A collector killed after it saved a scan's document (the ledger says finished) and before it
    handed the document to the waiting client: the client finds it in the ledger after
    ``client.RECHECK`` quiet seconds, instead of waiting for the sweeper (``sweep_after``). Made by
    hand: no worker runs; the test saves the document ``stoq scan`` gives for the same file under the
    recorded scan id, through the store, as the collector would."""
    from stoq.store import Store
    from stoq.tasks.client import RECHECK

    (sample,) = small_files(tmp_path / "in", 1)
    client = subprocess.Popen([str(BIN / "stoq"), "submit", str(sample), *YARA, "--format", "json"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        scan_id = recorded_scan(env, client)
        embedded = subprocess.run([str(BIN / "stoq"), "scan", str(sample), *YARA, "--format", "json", "--no-store"],
                                  env=env | {"STOQ_BROKER_URL": "", "STOQ_ARCHIVE": str(tmp_path / "a")}, cwd=tmp_path,
                                  capture_output=True, timeout=60)
        (doc,) = json.loads(embedded.stdout)
        doc["scan_id"] = scan_id
        with Store.open(env["STOQ_DATABASE_URL"]) as store:
            store.save([doc])
        assert query(env, "SELECT state FROM scan_ledger") == [("finished",)]
        out, err = client.communicate(timeout=RECHECK + 20)
        assert client.returncode == 0, err
        (got,) = json.loads(out)
        validate(got)
        assert got == doc
    finally:
        client.kill()
