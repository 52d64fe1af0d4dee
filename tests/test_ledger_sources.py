"""The scan ledger and the other ways in (issue 15): an input over ``max_file_bytes`` is recorded and
finished in the ledger by its client; a source that submits again under a scan id the ledger holds
(dirmon after a restart, intake given a message again) is neither refused nor stored twice; and a
publish lost after ``stoq dirmon`` or ``stoq intake`` sent it is published again from the ledger.

A private Redis, PostgreSQL and ``celery -A stoq worker`` processes (the fixtures of
tests/test_durability_services.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from test_cluster import BIN
from test_durability import query, small_files, wait_finished
from test_durability_services import PrivateRedis, env, redis_server, start  # noqa: F401  (env, redis_server: fixtures)

pytestmark = [pytest.mark.durability, pytest.mark.postgres]


def stoq(env: dict[str, str], cwd: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(BIN / "stoq"), *args], env=env | extra, cwd=cwd, capture_output=True, timeout=120)


def flush(env: dict[str, str]) -> None:
    for url in (env["STOQ_BROKER_URL"], env["STOQ_RESULT_BACKEND"]):
        redis.Redis.from_url(url).flushdb()


def queued(env: dict[str, str], queue: str) -> int:
    """Messages waiting in a queue of the Redis broker."""
    return int(redis.Redis.from_url(env["STOQ_BROKER_URL"]).llen(queue))


def test_an_oversized_input_is_finished_in_the_ledger_by_its_client(env: dict[str, str], tmp_path: Path) -> None:
    """No worker runs: the client hashes and types the input, records it, saves its document (which
    finishes it in the ledger) and sends nothing to the broker; ``--no-wait`` and waiting alike."""
    flush(env)
    big = tmp_path / "big.bin"
    big.write_bytes(b"B" * 5000)
    sha256 = hashlib.sha256(b"B" * 5000).hexdigest()
    sent = stoq(env, tmp_path, "submit", str(big), "--no-wait", STOQ_MAX_FILE_BYTES="4096")
    assert sent.returncode == 0, sent.stderr
    (scan_id,) = sent.stdout.decode().split()
    assert query(env, "SELECT scan_id, state, attempts, error, root_sha256 FROM scan_ledger") == [
        (scan_id, "finished", 1, None, sha256)]
    got = stoq(env, tmp_path, "results", scan_id, "--format", "json")
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    (record,) = doc["results"]
    assert (record["sha256"], record["size"], record["flags"], record["workers"]) == (
        sha256, 5000, ["limit:file-bytes"], {})
    assert doc["source"] == {"path": str(big)}
    waited = stoq(env, tmp_path, "submit", str(big), "--format", "json", STOQ_MAX_FILE_BYTES="4096")
    assert waited.returncode == 0, waited.stderr
    (again,) = json.loads(waited.stdout)
    assert again["results"][0]["sha256"] == sha256 and again["scan_id"] != scan_id
    assert query(env, "SELECT state, count(*) FROM scan_ledger GROUP BY state") == [("finished", 2)]
    assert queued(env, "stoq") == queued(env, "stoq-collect") == 0


def test_a_scan_id_the_ledger_holds_is_submitted_again_without_a_second_document(
        env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ClusterClient.submit`` of roots whose scan ids the ledger holds, as dirmon and intake submit
    again after a restart: pending, the scan is published again (no refusal: it was one before,
    "cannot record it in the ledger"); finished, nothing is sent and the id is given back."""
    from stoq.config import load_settings
    from stoq.submission import Root
    from stoq.tasks.client import ClusterClient

    flush(env)
    files = small_files(tmp_path / "in", 3)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    roots = [Root(f, str(uuid.uuid4()), None) for f in files]
    client = ClusterClient(load_settings(overrides={"workers": "napper"}))
    try:
        first = [(s.scan_id, s.error) for s in client.submit(roots, None)]
        publishes = queued(env, "stoq")
        second = [(s.scan_id, s.error) for s in client.submit(roots, None)]
        assert first == second == [(r.scan_id, None) for r in roots]
        assert query(env, "SELECT state, attempts, count(*) FROM scan_ledger GROUP BY state, attempts") == [
            ("pending", 1, 3)]
        assert queued(env, "stoq") == 2 * publishes  # published twice; the publisher begins each scan once
        c = start(tmp_path, env, "-c", "1", fresh=False)
        try:
            wait_finished(env, 3)
        finally:
            c.stop()
        third = [(s.scan_id, s.error) for s in client.submit(roots, None)]
        assert third == [(r.scan_id, None) for r in roots]
        assert queued(env, "stoq") == 0  # finished: not sent again
    finally:
        client.close()
    assert query(env, "SELECT count(*), count(DISTINCT scan_id) FROM scans") == [(3, 3)]
    assert query(env, "SELECT count(*) FROM plugin_results") == [(3,)]


def test_a_publish_lost_after_dirmon_sent_it_is_published_again(env: dict[str, str], tmp_path: Path) -> None:
    """dirmon records and publishes its files while no worker runs; the broker then loses the
    publishes (flushed); a worker started afterwards gets them from the ledger, and dirmon sees each
    file stored."""
    flush(env)
    watched = tmp_path / "watched"
    files = small_files(watched, 5)
    log = tmp_path / "dirmon.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(BIN / "stoq"), "dirmon", str(watched), "--workers", "napper", "--settle", "0.2",
                                 "--report-every", "0.5"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    c = None
    try:
        deadline = time.monotonic() + 60
        while query(env, "SELECT count(*) FROM scan_ledger") != [(5,)] or queued(env, "stoq") == 0:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        redis.Redis.from_url(env["STOQ_BROKER_URL"]).flushdb()  # the publishes are lost
        c = start(tmp_path, env, "-c", "1", fresh=False)
        wait_finished(env, 5)
        deadline = time.monotonic() + 30
        while query(env, "SELECT state, count(*) FROM dirmon_ledger GROUP BY state") != [("stored", 5)]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if c is not None:
            c.stop()
    assert sorted(r[0] for r in query(env, "SELECT root_sha256 FROM scans")) == sorted(
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts") == [(2, 5)]
    assert "published again 5 lost scan(s)" in c.log.read_text()


def test_intake_given_a_message_again_and_losing_its_publish_stores_it_once(env: dict[str, str], tmp_path: Path,
                                                                            redis_server: PrivateRedis) -> None:
    """``stoq intake`` (cluster) takes the same message twice, in two runs, while no worker runs: the
    second is not dead-lettered (its scan id is in the ledger: sent again); the broker then loses the
    publishes, and a worker started afterwards stores the message once, from the ledger."""
    flush(env)
    stream = f"stoq-test-intake-{uuid.uuid4().hex[:8]}"
    bus = redis.Redis.from_url(redis_server.url(2))
    message = json.dumps({"content_b64": base64.b64encode(b"NAP once\n").decode(), "id": "again"}).encode()
    c = None
    try:
        for _run in range(2):
            bus.xadd(stream, {"message": message})
            got = stoq(env, tmp_path, "intake", "--from", redis_server.url(2), "--queue", stream, "--drain",
                       "--consumer", "box", "--workers", "napper")
            assert got.returncode == 0, got.stderr
            assert b"intake: 1 accepted, 0 dead-lettered (stopping)" in got.stderr, got.stderr
        assert bus.xlen(f"{stream}.dlq") == 0
        assert query(env, "SELECT state, attempts, count(*) FROM scan_ledger GROUP BY state, attempts") == [
            ("pending", 1, 1)]
        redis.Redis.from_url(env["STOQ_BROKER_URL"]).flushdb()  # both publishes are lost
        c = start(tmp_path, env, "-c", "1", fresh=False)
        wait_finished(env, 1)
    finally:
        bus.delete(stream, f"{stream}.dlq")
        if c is not None:
            c.stop()
    assert query(env, "SELECT root_sha256, count(*) FROM scans GROUP BY root_sha256") == [
        (hashlib.sha256(b"NAP once\n").hexdigest(), 1)]
    assert query(env, "SELECT attempts FROM scan_ledger") == [(2,)]
