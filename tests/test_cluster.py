"""The distributed pipeline end to end: real `celery -A stoq worker` processes, Redis as broker and
result backend, PostgreSQL as the result store, and the `stoq submit` command as a user runs it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from sqlalchemy import text

from helpers import BENCH_RULES, CORPUS, amqp_url, database as pg_database, pg_admin, pg_url, redis_url, validate

BIN = Path(sys.executable).parent
DB = "stoq_cluster"


class Cluster:
    """A running worker and the environment a client needs to reach it."""

    def __init__(self, work: Path, env: dict[str, str], worker: subprocess.Popen[bytes], log: Path) -> None:
        self.work, self.env, self.worker, self.log = work, env, worker, log

    def stoq(self, *args: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / "stoq"), *args], env=self.env | extra, cwd=self.work, capture_output=True,
                              timeout=timeout)

    def redis(self) -> redis.Redis:
        # redis-py 8 reads with a 5 s socket timeout by default: a BLPOP waiting longer would fail
        return redis.Redis.from_url(self.env["STOQ_RESULT_BACKEND"], socket_timeout=120)

    def stop(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()


def cluster_env(work: Path, site: Path, dbs: tuple[int, int], database: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update(STOQ_BROKER_URL=redis_url(dbs[0]), STOQ_RESULT_BACKEND=redis_url(dbs[1]),
               STOQ_ARCHIVE=str(work / "archive"), STOQ_DATABASE_URL=pg_url(database),
               HOME=str(work), XDG_DATA_HOME=str(work / "data"), XDG_CONFIG_HOME=str(work / "config"),
               PYTHONPATH=str(site), STOQ_MEASURE_MESSAGES="1")
    return env


def fresh_database(name: str) -> None:
    with pg_admin().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_database(name)}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{pg_database(name)}"'))


def start(work: Path, env: dict[str, str], *args: str, fresh: bool = True) -> Cluster:
    """`celery -A stoq worker` with ``args``; returns once it is ready (``wait_ready``). ``fresh``: empty
    the Redis databases first (not for a worker joining a running cluster)."""
    for db in (env["STOQ_BROKER_URL"], env["STOQ_RESULT_BACKEND"]) if fresh else ():
        if db.startswith("redis://"):
            redis.Redis.from_url(db).flushdb()
    log = work / "worker.log"
    offset = log.stat().st_size if log.exists() else 0  # a worker restarted in the same place appends
    worker = subprocess.Popen([str(BIN / "celery"), "-A", "stoq", "worker", "-n", f"stoq-{work.name}@%h",
                               "--without-gossip", "--without-mingle", "-l", "info", "--logfile", str(log), *args],
                              env=env, cwd=work)
    wait_ready(worker, log, offset)
    return Cluster(work, env, worker, log)


READY = re.compile(rb"INFO/MainProcess\] \S+@\S+ ready\.")


def wait_ready(worker: subprocess.Popen[bytes], log: Path, offset: int = 0, timeout: float = 60) -> None:
    """Returns once the worker's log, past ``offset``, says ``<name> ready.``: Celery writes it once
    every consumer, the remote-control one included, is started, so the worker answers a ping from
    then on. (Polling ``celery inspect ping`` costs an interpreter start per try.)"""
    deadline = time.monotonic() + timeout
    while not (log.exists() and READY.search(log.read_bytes()[offset:])):
        assert worker.poll() is None, log.read_text() if log.exists() else "worker died"
        assert time.monotonic() < deadline, "worker did not start"
        time.sleep(0.05)


def running_cluster(work: Path, site: Path, dbs: tuple[int, int], database: str) -> Iterator[Cluster]:
    """A module's cluster: a fresh PostgreSQL database migrated, then one worker (``-c 2``) serving
    every queue, on the Redis databases ``dbs``; stopped when the module is done."""
    fresh_database(database)
    env = cluster_env(work, site, dbs, database)
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    c = start(work, env, "-c", "2")
    try:
        yield c
    finally:
        c.stop()


@contextlib.contextmanager
def dedicated_queue(work: Path, site: Path, database: str, queue: str) -> Iterator[tuple[Cluster, Cluster]]:
    """Two workers on Redis databases 6 and 7 and a fresh PostgreSQL ``database``: the first serves every
    queue but ``queue`` (``-X``), the second only ``queue`` (``-Q``), as an operator runs a plugin on
    machines of its own. Both stop, and the database is dropped, when the block ends."""
    fresh_database(database)
    env = cluster_env(work, site, (6, 7), database)
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    (work / "general").mkdir()
    (work / queue).mkdir()
    workers = (start(work / "general", env, "-c", "1", "-X", queue),
               start(work / queue, env, "-c", "1", "-Q", queue, fresh=False))
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()
        with pg_admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_database(database)}" WITH (FORCE)'))


def tasks_run(worker: Cluster) -> list[str]:
    """The names of the tasks a worker's log says succeeded, in order."""
    return re.findall(r"Task (stoq\.[a-z]+\.[a-z0-9_-]+)\[[0-9a-f-]+\] succeeded", worker.log.read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path_factory.mktemp("cluster"), testplugins_site, (12, 13), DB)


def normal(doc: dict[str, Any]) -> dict[str, Any]:
    """A document without what differs between runs: ids become positions; scan id and date go."""
    pos = {p["payload_id"]: i for i, p in enumerate(doc["results"])}
    results = [p | {"payload_id": pos[p["payload_id"]], "parent_id": pos.get(p["parent_id"]),
                    "duplicate_of": pos.get(p["duplicate_of"])} for p in doc["results"]]
    errors = [e | {"payload_id": pos[e["payload_id"]]} for e in doc["errors"]]
    return {k: v for k, v in doc.items() if k not in ("scan_id", "date")} | {"results": results, "errors": errors}


def jsonl(out: bytes) -> dict[str, dict[str, Any]]:
    docs = [json.loads(line) for line in out.splitlines()]
    return {d["source"]["path"]: d for d in docs}


def test_every_corpus_file_gets_the_embedded_answer(cluster: Cluster, tmp_path: Path) -> None:
    args = ["--workers", "yara,peinfo", "-o", f"yara.rules={BENCH_RULES}", "--format", "jsonl"]
    submitted = cluster.stoq("submit", str(CORPUS), *args)
    assert submitted.returncode in (0, 1), submitted.stderr.decode()[-3000:]
    embedded = cluster.stoq("scan", str(CORPUS), *args, "--no-store", STOQ_BROKER_URL="",
                            STOQ_DATABASE_URL=f"sqlite:///{tmp_path / 'e.db'}", STOQ_ARCHIVE=str(tmp_path / "a"))
    assert embedded.returncode == submitted.returncode, embedded.stderr.decode()[-3000:]
    remote, local = jsonl(submitted.stdout), jsonl(embedded.stdout)
    files = sorted(str(p) for p in CORPUS.iterdir() if p.is_file())
    assert sorted(remote) == files and sorted(local) == files
    for path in files:
        validate(remote[path])
        assert normal(remote[path]) == normal(local[path]), path
    assert sum(d["payloads"] for d in remote.values()) > len(files)  # children were extracted across the cluster
    # Every document is in PostgreSQL, as printed.
    from stoq.store import Store

    with Store.open(cluster.env["STOQ_DATABASE_URL"]) as store:
        for doc in remote.values():
            assert store.get(doc["scan_id"]) == doc


@pytest.mark.tools("bsdtar")  # test.deb
@pytest.mark.parametrize(("setting", "value", "flag"), [("STOQ_MAX_CHILDREN", "2", "limit:children"),
                                                       ("STOQ_MAX_BYTES", "3000", "limit:bytes"),
                                                       ("STOQ_MAX_DEPTH", "0", "limit:depth")])
def test_the_scan_limits_cut_the_same_children_in_the_cluster(cluster: Cluster, tmp_path: Path, setting: str,
                                                              value: str, flag: str) -> None:
    """A submission's limits travel with it: the cluster flags and drops exactly what embedded does."""
    files = [str(CORPUS / name) for name in ("test.docx", "test.tar", "test.deb", "test_empty.zip")]
    submitted = cluster.stoq("submit", *files, "--format", "jsonl", **{setting: value})
    embedded = cluster.stoq("scan", *files, "--format", "jsonl", "--no-store", STOQ_BROKER_URL="",
                            STOQ_ARCHIVE=str(tmp_path / "a"), **{setting: value})
    assert submitted.returncode == embedded.returncode == 0, submitted.stderr + embedded.stderr
    remote, local = jsonl(submitted.stdout), jsonl(embedded.stdout)
    assert sorted(remote) == sorted(files)
    for path in files:
        validate(remote[path])
        assert normal(remote[path]) == normal(local[path]), path
    assert any(flag in p["flags"] for doc in remote.values() for p in doc["results"])  # the limit did cut


def test_no_wait_prints_scan_ids_and_results_reads_them_later(cluster: Cluster) -> None:
    sample = CORPUS / "test.exe"
    sent = cluster.stoq("submit", str(sample), "--no-wait", "--workers", "peinfo")
    assert sent.returncode == 0, sent.stderr
    (scan_id,) = sent.stdout.decode().split()
    deadline = time.monotonic() + 60
    while (got := cluster.stoq("results", scan_id)).returncode != 0:
        assert time.monotonic() < deadline, got.stderr
        time.sleep(0.2)
    (doc,) = json.loads(got.stdout)
    validate(doc)
    assert doc["scan_id"] == scan_id and doc["results"][0]["filename"] == "test.exe"
    import pefile

    assert doc["results"][0]["workers"]["peinfo"]["imphash"] == pefile.PE(data=sample.read_bytes()).get_imphash()


HUGE_NAME = 60_000


def test_broker_messages_stay_small_whatever_the_input(cluster: Cluster, tmp_path: Path) -> None:
    """An archive of 700 members with long names: its answer (~250 KB of child references) and the next
    wave's references go through the wave's hash in Redis, never through the broker. Three more members
    have names of 60,000 characters (zip allows 65,535 bytes): the labels a task's headers show in Flower
    (``argsrepr``) are cut, so the whole message, headers included, stays small too."""
    big = tmp_path / "many.zip"
    huge = [f"{i}{'h' * (HUGE_NAME - 5)}.txt" for i in range(3)]
    with zipfile.ZipFile(big, "w") as zf:
        for name in huge:  # first, so that the first plugin task of the next wave names them
            zf.writestr(name, f"{name[0]} has a long name\n")
        for i in range(700):
            zf.writestr(f"{'n' * 300}/{i:04d}.txt", f"member {i}\n")
    r = cluster.redis()
    r.delete("stoq:measure:task:max", "stoq:measure:result:max")
    left_before = set(r.scan_iter("stoq:blob:*")) | set(r.scan_iter("stoq:wave:*"))
    got = cluster.stoq("submit", str(big), "--workers", "yara", "-o", f"yara.rules={BENCH_RULES}", "--format", "json")
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    validate(doc)
    assert doc["payloads"] == 704 and all("yara" in p["workers"] for p in doc["results"])
    assert [p["meta"]["member"] for p in doc["results"][1:4]] == huge and len(huge[0]) == HUGE_NAME
    assert doc["results"][4]["meta"]["member"] == f"{'n' * 300}/0000.txt"
    task_max, result_max = (int(r.get(k) or 0) for k in ("stoq:measure:task:max", "stoq:measure:result:max"))
    # the whole message as the broker stores it (body, headers, properties): a plugin task's body names
    # its wave and part only, and its headers show a few labels, each cut
    assert 0 < task_max < 4 * 1024, task_max
    assert result_max == len(b"null"), result_max  # answers never travel as task results
    # Those ~250 KB travelled in waves' hashes; each is deleted once its wave is settled.
    assert (set(r.scan_iter("stoq:blob:*")) | set(r.scan_iter("stoq:wave:*"))) - left_before == set()


def test_a_payload_that_kills_its_worker_is_quarantined_and_its_batch_mates_complete(cluster: Cluster,
                                                                                    tmp_path: Path) -> None:
    """Eight files go out in batches of four; the first holds SEGV. Its batch is redelivered, run
    carefully, the killer quarantined after two attempts; every other file gets its normal answer."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(8):
        (inputs / f"f{i}.bin").write_bytes(b"SEGV" if i == 0 else f"fine {i}".encode())
    got = cluster.stoq("submit", str(inputs), "--workers", "segv", "--max-depth", "0", timeout=240)
    assert got.returncode == 1, got.stderr  # plugin errors
    docs = {Path(d["source"]["path"]).name: d for d in map(json.loads, got.stdout.splitlines())}
    assert len(docs) == 8
    bad = docs.pop("f0.bin")
    validate(bad)
    (error,) = bad["errors"]
    assert (error["plugin"], error["kind"]) == ("segv", "crash") and "2 times; quarantined" in error["message"]
    for doc in docs.values():
        assert doc["errors"] == [] and doc["results"][0]["workers"] == {"segv": {"crashed": False}}
    from sqlalchemy import create_engine

    with create_engine(cluster.env["STOQ_DATABASE_URL"]).connect() as conn:  # stored once, whatever the redeliveries
        assert conn.execute(text("SELECT count(*) FROM scans WHERE scan_id = :s"), {"s": bad["scan_id"]}).scalar() == 1


def test_a_native_hang_is_killed_by_the_guard_and_quarantined(cluster: Cluster, tmp_path: Path) -> None:
    hang = tmp_path / "hang.bin"
    hang.write_bytes(b"SLEEP")
    started = time.monotonic()
    got = cluster.stoq("submit", str(hang), "--workers", "sleeper", "-o", "sleeper.time_limit=1", "--format", "json",
                       timeout=240)
    elapsed = time.monotonic() - started
    assert got.returncode == 1, got.stderr
    (doc,) = json.loads(got.stdout)
    (error,) = doc["errors"]
    assert (error["plugin"], error["kind"]) == ("sleeper", "timeout") and "quarantined" in error["message"]
    assert 12 <= elapsed < 120  # two attempts of 1 s + 5 s grace each, then the quarantine


def test_documents_are_written_in_input_order(tmp_path: Path, cluster: Cluster) -> None:
    """The first file is routed (by a dispatch rule) to `spin`, which runs into its 2 s time limit, so
    its batch finishes after the later ones: the documents still come out in input order, as embedded."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [f"f{i}.txt" for i in range(6)]
    for i, name in enumerate(names):
        (inputs / name).write_bytes(b"SLOWFILE" if i == 0 else f"quick {i}".encode())
    rules = tmp_path / "slow.yar"
    rules.write_text('rule slow { meta: plugin = "spin" strings: $a = "SLOWFILE" condition: $a }\n')
    got = cluster.stoq("submit", *(str(inputs / n) for n in names), "--workers", "boom", "-o", "boom.trigger=NEVER",
                       "-o", "spin.time_limit=2", "--max-depth", "0", "--format", "jsonl", timeout=120,
                       STOQ_DISPATCH_RULES=str(rules))
    assert got.returncode == 1, got.stderr
    docs = [json.loads(line) for line in got.stdout.splitlines()]
    assert [Path(d["source"]["path"]).name for d in docs] == names
    assert [(e["plugin"], e["kind"]) for e in docs[0]["errors"]] == [("spin", "timeout")]
    assert [d["errors"] for d in docs[1:]] == [[]] * 5


def test_an_oversized_and_an_unreadable_input_keep_the_others_in_input_order(tmp_path: Path, cluster: Cluster) -> None:
    """The client archives files a batch at a time: an input over max_file_bytes (hashed and typed by
    the client, stored by the store connector) and an input it cannot open do not reorder the rest."""
    import hashlib

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_bytes(b"first")
    big = inputs / "big.bin"
    big.write_bytes(b"B" * 5000)
    (inputs / "c.txt").write_bytes(b"third")
    gone = inputs / "gone.txt"
    gone.symlink_to(inputs / "nowhere")
    got = cluster.stoq("submit", str(inputs / "a.txt"), str(big), str(gone), str(inputs / "c.txt"), "--workers", "yara",
                       "-o", f"yara.rules={BENCH_RULES}", "--format", "jsonl", timeout=120,
                       STOQ_MAX_FILE_BYTES="4096", STOQ_BATCH_MAX="2")
    assert got.returncode == 3, got.stderr  # an input could not be read
    assert b"gone.txt: no such file or directory" in got.stderr.lower()
    docs = [json.loads(line) for line in got.stdout.splitlines()]
    for doc in docs:
        validate(doc)
    assert [Path(d["source"]["path"]).name for d in docs] == ["a.txt", "big.bin", "c.txt"]
    (record,) = docs[1]["results"]
    assert record["flags"] == ["limit:file-bytes"] and record["workers"] == {}
    assert record["sha256"] == hashlib.sha256(b"B" * 5000).hexdigest() and record["size"] == 5000
    assert all("yara" in d["results"][0]["workers"] for d in (docs[0], docs[2]))


def test_the_scan_time_limit_holds_across_waves(tmp_path: Path, cluster: Cluster) -> None:
    """The scan's clock travels with its state: children begun (by the collector, in the next wave)
    after `max_scan_seconds` are listed with limit:scan-time and not analysed, as embedded."""
    sample = tmp_path / "root.bin"
    sample.write_bytes(b"root")
    got = cluster.stoq("submit", str(sample), "--workers", "nest,spin", "-o", "nest.count=3", "-o", "spin.time_limit=0.6",
                       "--max-depth", "1", "--format", "json", timeout=120, STOQ_MAX_SCAN_SECONDS="0.3")
    assert got.returncode == 1, got.stderr
    (doc,) = json.loads(got.stdout)
    validate(doc)
    root, *children = doc["results"]
    assert root["workers"] == {"nest": {"emitted": 3}}
    assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("spin", "timeout")]
    assert [(c["workers"], c["flags"]) for c in children] == [({}, ["limit:scan-time"])] * 3


def test_the_sweeper_stores_a_finished_scan_its_collector_left_unstored(tmp_path: Path, testplugins_site: Path,
                                                                        cluster: Cluster) -> None:
    """A collector killed after finishing a scan and before storing it leaves the finished state in
    Redis, still registered in ``stoq:active``: the sweeper sends it to the store."""
    from stoq.config import load_settings
    from stoq.engine import Engine
    from stoq.limits import Budget
    from stoq.tasks import state as st

    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_SWEEP_AFTER": "2"}
    settings = load_settings(env={}, overrides={"workers": "yara", "archiver": "none"},
                             plugin_options={"yara": {"rules": str(BENCH_RULES)}})
    engine = Engine(settings)
    doc = engine.scan(b"left behind by a dead collector", "left.txt", {"path": "/in/left.txt"})
    c = start(tmp_path, env, "-c", "1", "-Q", "stoq,stoq-collect")
    try:
        r = c.redis()
        profile = st.put_profile(r, st.profile_of(settings))
        notify = "stoq:notify:test-unstored"
        scan = st.ScanState(doc["scan_id"], doc["date"], doc["source"], profile, notify, engine.limits,
                            Budget(engine.limits), results=doc["results"], errors=doc["errors"], pending=[],
                            wave="w1", done=True)
        r.set(st.scan_key(scan.scan_id), scan.to_json())
        r.zadd(st.ACTIVE, {scan.scan_id: time.time() + 1})
        popped = r.blpop([notify], timeout=30)
        assert popped is not None, c.log.read_text()[-3000:]
        assert json.loads(popped[1]) == doc
        assert r.zscore(st.ACTIVE, scan.scan_id) is None and not r.exists(st.scan_key(scan.scan_id))
        got = c.stoq("results", doc["scan_id"], "--format", "json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == [doc]
        assert "sweeper sent 1 finished but unstored scan(s) to the store" in c.log.read_text()
    finally:
        c.stop()


@pytest.mark.durability
def test_the_sweeper_closes_a_scan_whose_wave_never_completes(tmp_path: Path, testplugins_site: Path,
                                                                cluster: Cluster) -> None:
    """No worker serves the `boom` queue: the wave never completes, and the sweeper closes the scan."""
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_SWEEP_AFTER": "2"}
    c = start(tmp_path, env, "-c", "1", "-Q", "stoq,stoq-collect,yara")
    try:
        sample = tmp_path / "x.txt"
        sample.write_bytes(b"hello")
        waves_before = set(c.redis().scan_iter("stoq:wave:*"))
        started = time.monotonic()
        got = c.stoq("submit", str(sample), "--workers", "boom,yara", "-o", f"yara.rules={BENCH_RULES}",
                     "--format", "json", timeout=120)
        assert got.returncode == 1, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        # The wave is closed with what arrived: yara's answer is kept, boom alone times out.
        assert [(e["plugin"], e["kind"]) for e in doc["errors"]] == [("boom", "timeout")]
        assert all(e["message"] == "no answer within 2 s (a lost or unserved task), sent again 1 time(s), 2 s "
                   "apart; the wave was closed by the sweeper" for e in doc["errors"])
        assert list(doc["results"][0]["workers"]) == ["yara"]
        # The closed wave (yara's answer, boom's references still waiting) is deleted with it.
        assert set(c.redis().scan_iter("stoq:wave:*")) - waves_before == set()
        # boom's part was sent twice: first by the publisher, then once by the sweeper (wave_resends)
        assert len(re.findall(r"sweeper sent again the unanswered plugin tasks of 1 overdue wave", c.log.read_text())) == 1
        assert redis.Redis.from_url(env["STOQ_BROKER_URL"]).llen("boom") == 2
        # (sweep_after + one sweep interval) twice + start-up
        assert time.monotonic() - started < 2 * (2 + 5) + 10
    finally:
        c.stop()


@pytest.mark.durability
def test_the_sweeper_sends_a_lost_plugin_task_again_and_keeps_every_answer(tmp_path: Path, testplugins_site: Path,
                                                                           cluster: Cluster) -> None:
    """A plugin task lost from its queue (as when a worker holding it is killed on a Redis broker: the
    message stays unacknowledged for the visibility timeout, 6 h) costs time, not answers: after
    ``sweep_after`` the sweeper sends the wave's unanswered part again, and only that part; the
    document is the embedded one, with no error entry."""
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_SWEEP_AFTER": "2"}
    (tmp_path / "first").mkdir()
    (tmp_path / "yara").mkdir()
    first = start(tmp_path / "first", env, "-c", "1", "-X", "yara")  # nobody serves yara yet
    late = None
    broker = redis.Redis.from_url(env["STOQ_BROKER_URL"])
    args = [str(CORPUS / "test.exe"), "--workers", "yara,peinfo", "-o", f"yara.rules={BENCH_RULES}", "--format", "json"]
    client = subprocess.Popen([str(BIN / "stoq"), "submit", *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while broker.llen("yara") != 1:
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.02)
        assert broker.delete("yara") == 1  # the yara task is lost
        late = start(tmp_path / "yara", env, "-c", "1", "-Q", "yara", fresh=False)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, out + err
        (doc,) = json.loads(out)
        validate(doc)
        assert doc["errors"] == []
        assert list(doc["results"][0]["workers"])[:2] == ["yara", "peinfo"]
        embedded = first.stoq("scan", *args, "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
        # The other parts' answers were kept: each ran once; yara's ran once, sent by the sweeper.
        ran = [task for task in tasks_run(first) if task != "stoq.connectors.catch_up"]
        assert sorted(ran) == ["stoq.carver.debloat", "stoq.carver.trailer", "stoq.worker.peinfo"]
        assert tasks_run(late) == ["stoq.worker.yara"]
        assert "sweeper sent again the unanswered plugin tasks of 1 overdue wave" in (
            first.log.read_text() + late.log.read_text())
    finally:
        client.kill()
        for worker in (first, late):
            if worker is not None:
                worker.stop()


def test_a_visibility_timeout_shorter_than_the_longest_task_is_refused(tmp_path: Path, testplugins_site: Path) -> None:
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_VISIBILITY_TIMEOUT": "600"}
    got = subprocess.run([str(BIN / "celery"), "-A", "stoq", "worker", "-c", "1"], env=env, cwd=tmp_path,
                         capture_output=True, timeout=60)
    assert got.returncode != 0
    assert b"visibility timeout (600 s) is not longer than the longest plugin task (16640 s" in got.stderr


@pytest.mark.rabbitmq
def test_rabbitmq_as_broker(tmp_path: Path, testplugins_site: Path, cluster: Cluster) -> None:
    """The whole pipeline with RabbitMQ carrying the tasks (Redis keeps the chords' results)."""
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_BROKER_URL": amqp_url()}
    c = start(tmp_path, env, "-c", "1")
    try:
        got = c.stoq("submit", str(CORPUS / "test.zip"), "--workers", "yara", "-o", f"yara.rules={BENCH_RULES}",
                     "--format", "json", timeout=120)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        embedded = c.stoq("scan", str(CORPUS / "test.zip"), "--workers", "yara", "-o", f"yara.rules={BENCH_RULES}",
                          "--format", "json", "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
    finally:
        c.stop()


@pytest.mark.rabbitmq
def test_rabbitmq_redelivers_the_work_of_a_killed_worker(tmp_path: Path, testplugins_site: Path,
                                                        cluster: Cluster) -> None:
    """A whole worker killed while its plugin runs (main process and pool, as when its machine
    vanishes): RabbitMQ requeues the unacknowledged task when the connection drops, and a replacement
    worker finishes the scan with the plugin's answer: nothing lost, no error entry."""
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_BROKER_URL": amqp_url()}
    homes = [tmp_path / name for name in ("own", "doomed", "spare")]
    for home in homes:
        home.mkdir()
    workers = [start(homes[0], env, "-c", "1", "-Q", "stoq,stoq-collect"), start(homes[1], env, "-c", "1", "-Q", "napper")]
    try:
        sample = tmp_path / "nap.txt"
        sample.write_bytes(b"NAP while the worker dies")
        sent = workers[0].stoq("submit", str(sample), "--no-wait", "--workers", "napper", "-o", "napper.seconds=4")
        assert sent.returncode == 0, sent.stderr
        (scan_id,) = sent.stdout.decode().split()
        deadline = time.monotonic() + 60
        while b"napping 4.0 s" not in workers[1].log.read_bytes():
            assert time.monotonic() < deadline, workers[1].log.read_text()
            time.sleep(0.1)
        pool = subprocess.run(["pgrep", "-P", str(workers[1].worker.pid)], capture_output=True).stdout.split()
        for pid in [workers[1].worker.pid, *map(int, pool)]:
            os.kill(pid, signal.SIGKILL)
        workers[1].worker.wait()
        workers.append(start(homes[2], env, "-c", "1", "-Q", "napper", fresh=False))
        while (got := workers[0].stoq("results", scan_id)).returncode != 0:
            assert time.monotonic() < deadline + 60, got.stderr
            time.sleep(0.3)
        (doc,) = json.loads(got.stdout)
        validate(doc)
        assert doc["errors"] == [] and doc["results"][0]["workers"] == {"napper": {"napped": 4.0}}
        assert b"napping 4.0 s" in workers[2].log.read_bytes()  # the replacement ran it again
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.parametrize("archiver", ["directory", "postgres"])
def test_the_other_archivers_carry_a_submission_through_the_cluster(tmp_path: Path, testplugins_site: Path,
                                                                   cluster: Cluster, archiver: str) -> None:
    """A file per payload (a shared directory, NFS) or a PostgreSQL table (no shared filesystem): the
    client archives the roots, the workers read them and archive the children, and the documents are
    the embedded ones."""
    env = cluster_env(tmp_path, testplugins_site, (8, 9), DB) | {"STOQ_ARCHIVER": archiver}
    if archiver == "postgres":
        env["STOQ_ARCHIVE"] = env["STOQ_DATABASE_URL"]
    c = start(tmp_path, env, "-c", "2")
    try:
        args = ["--workers", "yara", "-o", f"yara.rules={BENCH_RULES}", "--format", "jsonl"]
        files = [str(CORPUS / name) for name in ("test.zip", "test.exe", "test.gz")]
        got = c.stoq("submit", *files, *args, timeout=120)
        assert got.returncode == 0, got.stderr
        embedded = c.stoq("scan", *files, *args, "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVER="pack",
                          STOQ_ARCHIVE=str(tmp_path / "a"))
        remote, local = jsonl(got.stdout), jsonl(embedded.stdout)
        assert sorted(remote) == sorted(files)
        for path in files:
            validate(remote[path])
            assert normal(remote[path]) == normal(local[path]), path
        assert sum(d["payloads"] for d in remote.values()) > len(files)  # children went through the archive too
        from stoq.archive import open_archive

        archive = open_archive(archiver, env["STOQ_ARCHIVE"] if archiver == "postgres" else Path(env["STOQ_ARCHIVE"]))
        for doc in remote.values():
            for payload in doc["results"]:
                if payload["duplicate_of"] is None:
                    assert hashlib.sha256(archive.get(payload["sha256"])).hexdigest() == payload["sha256"]
        archive.close()
    finally:
        c.stop()


def test_the_no_docker_topology_script_runs_a_submission(tmp_path: Path, testplugins_site: Path,
                                                         cluster: Cluster) -> None:
    """scripts/stoq-cluster starts one worker per group (here: plugins, and stoq's own queue). Started
    as root, its workers run as STOQ_CLUSTER_USER (default nobody), without Celery's root warning, and
    a client runs as that user through `stoq-cluster run`. The directories must be reachable by that
    user, so the test works in a directory of its own under /tmp (pytest's tmp_path is closed to other
    users). Where nobody cannot run this install's interpreter (a Python under root's home directory),
    the script must refuse to start, saying so; the submission is then made with STOQ_CLUSTER_USER=root."""
    root = os.geteuid() == 0
    work = Path(tempfile.mkdtemp(prefix="stoq-cluster-test-", dir="/tmp")) if root else tmp_path
    work.chmod(0o755)
    env = cluster_env(work, testplugins_site, (8, 9), DB) | {
        "STOQ_CLUSTER_GROUPS": "yara,peinfo,trailer,debloat stoq,stoq-collect", "STOQ_CLUSTER_DIR": str(work / "run"), "STOQ_BIN": str(BIN)}  # (trailer and debloat: MIME routing sends every PE to them)
    for url in (env["STOQ_BROKER_URL"], env["STOQ_RESULT_BACKEND"]):
        redis.Redis.from_url(url).flushdb()
    script = Path(__file__).resolve().parents[1] / "scripts" / "stoq-cluster"
    nobody = pwd.getpwnam("nobody")
    expected_uid = os.geteuid()
    if root:
        probe = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--init-groups", "--",
                                str(BIN / "python"), "-c", "import stoq.tasks.app"], env=env, capture_output=True)
        if probe.returncode == 0:
            expected_uid = nobody.pw_uid
        else:
            refused = subprocess.run([str(script), "start"], env=env, capture_output=True, timeout=120)
            assert refused.returncode == 1 and refused.stderr.decode().startswith(
                f"stoq-cluster: user nobody cannot run stoq's workers with {BIN}/python"), refused.stderr
            assert not list((work / "run").glob("*.pid"))
            env["STOQ_CLUSTER_USER"] = "root"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        got = subprocess.run([str(script), "run", "stoq", "submit", str(CORPUS / "test.exe"), "--workers", "yara,peinfo",
                              "-o", f"yara.rules={BENCH_RULES}", "--format", "json"], env=env, cwd=work,
                             capture_output=True, timeout=120)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        assert sorted(doc["results"][0]["workers"]) == ["peinfo", "trailer", "yara"]
        owners = {Path(f"/proc/{int(pid.read_text())}").stat().st_uid for pid in (work / "run").glob("worker*.pid")}
        assert owners == {expected_uid}
        logs = sorted((work / "run").glob("worker*.log"))
        assert len(logs) == 2
        assert expected_uid == 0 or not any("SecurityWarning" in log.read_text() for log in logs)
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=60)
        if root:
            shutil.rmtree(work, ignore_errors=True)


def test_compose_serves_every_plugin_queue_and_stoqs_own() -> None:
    import yaml

    from stoq.registry import Registry

    services = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())["services"]
    served: set[str] = set()
    for svc in services.values():
        command = svc.get("entrypoint") or []
        if command[:4] == ["celery", "-A", "stoq", "worker"]:
            served |= set(command[command.index("-Q") + 1].split(","))
            broker = svc["environment"]["STOQ_BROKER_URL"]  # overridable: ${STOQ_BROKER_URL:-<default>}
            assert broker.startswith("${STOQ_BROKER_URL:-") and broker.endswith("}"), broker
            assert broker[len("${STOQ_BROKER_URL:-"):-1].startswith("redis://"), broker  # Redis by default
    bundled = {e.name for e in Registry.discover().entries.values() if e.cls is not None
               and e.cls.category in ("worker", "carver", "extractor", "decoder", "reader", "connector")
               and e.cls.__module__.startswith("stoq_plugins")}
    assert bundled and bundled | {"stoq", "stoq-collect"} <= served
    assert services["submit"]["command"][0] == "submit"


def test_the_no_docker_script_starts_the_worker_groups_of_compose_by_default() -> None:
    import re

    import yaml

    root = Path(__file__).resolve().parents[1]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    compose = sorted(svc["entrypoint"][svc["entrypoint"].index("-Q") + 1] for svc in services.values()
                     if (svc.get("entrypoint") or [])[:4] == ["celery", "-A", "stoq", "worker"])
    default = re.search(r'groups="\$\{STOQ_CLUSTER_GROUPS:-([^}]*)\}"', (root / "scripts" / "stoq-cluster").read_text())
    assert default is not None and sorted(default.group(1).split()) == compose and len(compose) == 2


def test_settings_the_workers_cannot_run_are_refused_to_the_client(cluster: Cluster) -> None:
    """A rule file that exists on the client's side only: the publisher cannot start yara, and the
    waiting client is told so (exit 4) instead of waiting for ever."""
    got = cluster.stoq("submit", str(CORPUS / "test.txt"), "--workers", "yara", "-o", "yara.rules=/nonexistent/r.yar",
                       timeout=60)
    assert got.returncode == 4, got.stderr
    assert b"the cluster refused scan" in got.stderr and b"plugin 'yara' cannot start" in got.stderr
    assert got.stdout == b""


def test_a_client_whose_archive_the_workers_cannot_read_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """The client archives into a directory the workers do not share: the publisher cannot read the
    roots, and the waiting client is told so (exit 4) instead of waiting for ever."""
    got = cluster.stoq("submit", str(CORPUS / "test.txt"), "--workers", "yara", timeout=60,
                       STOQ_ARCHIVE=str(tmp_path / "elsewhere"))
    assert got.returncode == 4, got.stderr
    assert b"the cluster refused scan" in got.stderr and b"this worker's archive (FileNotFoundError" in got.stderr
    assert got.stdout == b""


def test_celeryconfig_overrides_stoqs_defaults(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text("worker_prefetch_multiplier = 7\nbroker_url = 'redis://127.0.0.1:6379/3'\n")
    code = ("from stoq.tasks.config import make_app; a = make_app(); "
            "print(a.conf.worker_prefetch_multiplier, a.conf.broker_url, a.conf.task_serializer)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {"PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, check=True).stdout
    assert out.split() == [b"7", b"redis://127.0.0.1:6379/3", b"json"]


def test_a_configured_connector_runs_after_the_store(cluster: Cluster, tmp_path: Path) -> None:
    """`--connectors jsonl`: the chain saves to PostgreSQL, then the jsonl connector task appends each
    document, read back from the store, to its file."""
    out = tmp_path / "sink.jsonl"
    files = [CORPUS / "test.zip", CORPUS / "test.exe"]
    got = cluster.stoq("submit", *map(str, files), "--connectors", "jsonl", "-o", f"jsonl.path={out}",
                       "--workers", "peinfo", "--format", "jsonl", timeout=120)
    assert got.returncode == 0, got.stderr
    printed = jsonl(got.stdout)
    deadline = time.monotonic() + 30
    while not out.exists() or out.read_bytes().count(b"\n") < 2:
        assert time.monotonic() < deadline, "the connector never wrote"
        time.sleep(0.2)
    assert jsonl(out.read_bytes()) == printed
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_a_payload_that_raises_or_times_out_costs_only_itself(cluster: Cluster, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        (inputs / f"f{i}.bin").write_bytes(b"BOOM" if i == 0 else f"fine {i}".encode())
    got = cluster.stoq("submit", str(inputs), "--workers", "boom", "-o", "boom.trigger=BOOM", "--max-depth", "0")
    assert got.returncode == 1, got.stderr
    docs = {Path(d["source"]["path"]).name: d for d in map(json.loads, got.stdout.splitlines())}
    (error,) = docs.pop("f0.bin")["errors"]
    assert (error["plugin"], error["kind"]) == ("boom", "error") and error["message"].startswith("ValueError: boom on purpose")
    assert [d["results"][0]["workers"] for d in docs.values()] == [{"boom": {"ok": True}}] * 3
    # A Python loop that swallows every Exception: the soft limit stops it, in the same worker process.
    got = cluster.stoq("submit", str(inputs / "f1.bin"), str(inputs / "f2.bin"), "--workers", "spin,boom",
                       "-o", "spin.time_limit=1", "-o", "boom.trigger=BOOM", "--max-depth", "0", "--format", "json",
                       timeout=120)
    assert got.returncode == 1, got.stderr
    for doc in json.loads(got.stdout):
        (error,) = doc["errors"]
        assert (error["plugin"], error["kind"], error["message"]) == ("spin", "timeout", "exceeded 1 s")
        assert doc["results"][0]["workers"] == {"boom": {"ok": True}}
    # A payload that times out costs only itself: f0 and f1 travel in the same batch (the first of 2,
    # 1, 1), so in the same spin task; f1, f2 and f3 get spin's answer.
    (inputs / "f0.bin").write_bytes(b"SPIN")
    got = cluster.stoq("submit", str(inputs), "--workers", "spin", "-o", "spin.trigger=SPIN", "-o", "spin.time_limit=1",
                       "--max-depth", "0", timeout=120)
    assert got.returncode == 1, got.stderr
    docs = {Path(d["source"]["path"]).name: d for d in map(json.loads, got.stdout.splitlines())}
    (error,) = docs.pop("f0.bin")["errors"]
    assert (error["plugin"], error["kind"], error["message"]) == ("spin", "timeout", "exceeded 1 s")
    assert [(d["errors"], d["results"][0]["workers"]) for d in docs.values()] == [([], {"spin": {"spun": False}})] * 3


def test_bytes_decompressed_and_dropped_count_against_the_scan_in_the_cluster(cluster: Cluster,
                                                                                tmp_path: Path) -> None:
    """The nested zips of test_hostile_archives, whose leaves are all dropped at the member cap: what the
    extractors decompress travels back with their answers and is spent from the scan's budget between
    waves; the 64 inner zips of one wave share what is left. The document is the embedded one."""
    from test_hostile_archives import expected_inner, nested_leaves

    max_bytes = 4 << 20
    nested = nested_leaves(8, 100 * 1024)
    (tmp_path / "nested.zip").write_bytes(nested[0])
    limits = {"STOQ_MAX_BYTES": str(max_bytes), "STOQ_DECOMPRESS__MAX_MEMBER_BYTES": str(64 * 1024)}
    submitted = cluster.stoq("submit", str(tmp_path / "nested.zip"), "--format", "jsonl", **limits)
    embedded = cluster.stoq("scan", str(tmp_path / "nested.zip"), "--format", "jsonl", "--no-store",
                            STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"), **limits)
    assert submitted.returncode == embedded.returncode == 0, submitted.stderr + embedded.stderr
    [remote], [local] = jsonl(submitted.stdout).values(), jsonl(embedded.stdout).values()
    validate(remote)
    assert normal(remote) == normal(local)
    inner = remote["results"][9:]
    assert [r["workers"]["decompress"]["decompressed"] for r in inner] == expected_inner(nested, max_bytes)
    assert all("limit:bytes" in r["flags"] for r in inner)


def test_connectors_retry_with_backoff_while_their_backend_is_away(cluster: Cluster, tmp_path: Path) -> None:
    """`--connectors jsonl,file,elasticsearch` with the Elasticsearch server (tests/fake_services.py) down
    when the scans finish: jsonl and file deliver at once; the elasticsearch task fails, is retried with
    backoff (1 s, 2 s, 4 s...), and once the server is started delivers every scan; deliveries counted."""
    from fake_services import FakeElasticsearch

    es = FakeElasticsearch()  # nobody listening on its port yet
    sink, out = tmp_path / "sink.jsonl", tmp_path / "files"
    files = [CORPUS / "test.txt", CORPUS / "test.zip", CORPUS / "test.html", CORPUS / "test.json"]
    got = cluster.stoq("submit", *map(str, files), "--connectors", "jsonl,file,elasticsearch", "-o", f"jsonl.path={sink}",
                       "-o", f"file.directory={out}", "-o", f"elasticsearch.url={es.url}", "-o", "elasticsearch.timeout=2",
                       "--format", "jsonl", timeout=120)
    assert got.returncode == 0, got.stderr
    docs = {d["scan_id"]: d for d in jsonl(got.stdout).values()}
    deadline = time.monotonic() + 60
    while not (sink.exists() and sink.read_bytes().count(b"\n") == len(files) and len(list(out.rglob("*.json"))) == len(files)
               and re.search(r"stoq\.connector\.elasticsearch\[[0-9a-f-]+\] retry: Retry in", cluster.log.read_text())):
        assert time.monotonic() < deadline, "jsonl/file never wrote, or elasticsearch never retried"
        time.sleep(0.2)
    assert {d["scan_id"]: d for d in jsonl(sink.read_bytes()).values()} == docs
    assert sorted(p.stem for p in out.rglob("*.json")) == sorted(docs)
    es.start()
    try:
        deadline = time.monotonic() + 60
        while {k.split("/", 1)[1] for k in es.writes if k.startswith("stoq-scans/")} != set(docs):
            assert time.monotonic() < deadline, f"delivered {es.writes}"
            time.sleep(0.2)
        time.sleep(1)  # a late duplicate would arrive now
        scans = [k.split("/", 1)[1] for k in es.writes if k.startswith("stoq-scans/")]
        assert sorted(scans) == sorted(docs)  # every scan at least once; no duplicate in this run
        for scan_id, doc in docs.items():
            assert es.indexed[f"stoq-scans/{scan_id}"] == doc
    finally:
        es.stop()
