"""Blame only the guilty (issue 15): real `celery -A stoq worker` processes on Redis and PostgreSQL.

A pool death is charged by the worker's guard (``stoq.tasks.guard``) to the (plugin, sha256) running
in that process, by content, so copies of a poison file share one record; an outside SIGKILL is
retried before it counts; a plugin that ignores its soft limit is ended by the hard one. Forged broker
messages (pickle, undecodable) are refused without running anything."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from helpers import redis_url
from test_cluster import BIN, Cluster, cluster_env, fresh_database, start

pytestmark = pytest.mark.durability

DB = "stoq_blame"
QUARANTINE_AFTER = 2  # the documented default of the quarantine_after setting (stoq/config.py)


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[Cluster]:
    """One worker with one pool process (``-c 1``): deaths happen one at a time, so their count is exact."""
    work = tmp_path_factory.mktemp("blame")
    fresh_database(DB)
    env = cluster_env(work, testplugins_site, (12, 13), DB) | {"TESTPLUGINS_SEGV_LOG": str(work / "segv.log")}
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    c = start(work, env, "-c", "1")
    try:
        yield c
    finally:
        c.stop()


def deaths(worker: Cluster, how: str) -> int:
    """Pool processes the worker's main process saw die by ``how`` (e.g. ``SIGSEGV``)."""
    return len(re.findall(rf"Process 'ForkPoolWorker-\d+' pid:\d+ exited with 'signal \d+ \({how}\)'",
                          worker.log.read_text()))


def blame(worker: Cluster, plugin: str, content: bytes) -> dict[str, str]:
    raw = worker.redis().hgetall(f"stoq:blame:{plugin}:{hashlib.sha256(content).hexdigest()}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def docs_by_name(got: subprocess.CompletedProcess[bytes]) -> dict[str, dict[str, Any]]:
    return {Path(d["source"]["path"]).name: d for d in map(json.loads, got.stdout.splitlines())}


def test_twenty_copies_of_a_poison_file_cost_two_deaths_and_their_batch_mates_complete(one: Cluster,
                                                                                     tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    poison = b"SEGV poison"
    for i in range(20):
        (inputs / f"p{i:02}.bin").write_bytes(poison)
    for i in range(6):
        (inputs / f"fine{i}.bin").write_bytes(f"fine {i}".encode())
    before = deaths(one, "SIGSEGV")
    got = one.stoq("submit", str(inputs), "--workers", "segv", "--max-depth", "0", timeout=240)
    assert got.returncode == 1, got.stderr  # plugin errors
    docs = docs_by_name(got)
    assert len(docs) == 26
    assert deaths(one, "SIGSEGV") - before == QUARANTINE_AFTER  # not one per copy (21 before the fix)
    runs = (one.work / "segv.log").read_text().splitlines()  # the plugin's own count: a line as it dies
    assert runs.count(hashlib.sha256(poison).hexdigest()) == QUARANTINE_AFTER
    assert blame(one, "segv", poison) == {"fatal": str(QUARANTINE_AFTER)}
    for i in range(20):
        (error,) = docs[f"p{i:02}.bin"]["errors"]
        assert (error["plugin"], error["kind"]) == ("segv", "crash")
        assert f"{QUARANTINE_AFTER} times; quarantined (2 fatal)" in error["message"]
    for i in range(6):
        doc = docs[f"fine{i}.bin"]
        assert doc["errors"] == [] and doc["results"][0]["workers"] == {"segv": {"crashed": False}}


def test_an_outside_kill_is_retried_before_it_counts(one: Cluster, tmp_path: Path) -> None:
    """SIGKILL of the pool process (as the OOM killer sends) while a healthy file runs: the file is
    run again and gets its normal answer; the death is recorded as ``outside``, nothing quarantined."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "nap.bin").write_bytes(b"NAP healthy")
    (inputs / "mate.bin").write_bytes(b"a batch mate")
    proc = subprocess.Popen([str(BIN / "stoq"), "submit", str(inputs), "--workers", "napper", "-o",
                             "napper.seconds=4", "--max-depth", "0"], env=one.env, cwd=one.work,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    naps = one.log.read_text().count("napping")
    deadline = time.monotonic() + 60
    while one.log.read_text().count("napping") == naps:
        assert time.monotonic() < deadline and proc.poll() is None, "napper never started"
        time.sleep(0.1)
    (pool,) = children(one.worker.pid)  # the pool process (its own child is its guard)
    os.kill(pool, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    docs = {Path(d["source"]["path"]).name: d for d in map(json.loads, out.splitlines())}
    assert docs["nap.bin"]["errors"] == [] and docs["nap.bin"]["results"][0]["workers"] == {"napper": {"napped": 4.0}}
    assert docs["mate.bin"]["errors"] == []
    assert blame(one, "napper", b"NAP healthy") == {"outside": "1"}
    assert blame(one, "napper", b"a batch mate") == {}  # it was not running: not charged


def test_a_plugin_that_ignores_its_soft_limit_is_ended_by_the_hard_limit(one: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "stubborn.bin"
    path.write_bytes(b"STUBBORN")
    got = one.stoq("submit", str(path), "--workers", "stubborn", "-o", "stubborn.time_limit=1", "--format", "json",
                   timeout=240)
    assert got.returncode == 1, got.stderr
    (doc,) = json.loads(got.stdout)
    (error,) = doc["errors"]
    assert (error["plugin"], error["kind"]) == ("stubborn", "timeout")
    assert "exceeded its 1 s limit in native code; worker killed 2 times; quarantined (2 timeout)" in error["message"]
    assert blame(one, "stubborn", b"STUBBORN") == {"timeout": "2", "limit": "1"}


def embedded_env(tmp_path: Path, site: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {
        "PYTHONPATH": str(site), "HOME": str(tmp_path), "STOQ_ARCHIVE": str(tmp_path / "archive"),
        "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_a_plugin_that_ignores_its_soft_limit_embedded(tmp_path: Path, testplugins_site: Path) -> None:
    """The embedded pool's supervisor is the hard limit there: the same error kind."""
    path = tmp_path / "stubborn.bin"
    path.write_bytes(b"STUBBORN")
    env = embedded_env(tmp_path, testplugins_site)
    got = subprocess.run([str(BIN / "stoq"), "scan", str(path), "--workers", "stubborn", "-o", "stubborn.time_limit=1",
                          "--jobs", "1", "--format", "json"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert got.returncode == 1, got.stderr
    (doc,) = json.loads(got.stdout)
    (error,) = doc["errors"]
    assert (error["plugin"], error["kind"]) == ("stubborn", "timeout")


class Creates:
    """Unpickled, it would create ``path`` (``open(path, "w")``): the side effect a forged message wants."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_forged_messages_are_refused(one: Cluster, tmp_path: Path) -> None:
    from kombu import Connection

    created = tmp_path / "pwned"
    log_before = one.log.read_text()
    with Connection(one.env["STOQ_BROKER_URL"]) as conn:
        producer = conn.Producer()
        for serializer, body in (("pickle", ((Creates(str(created)),), {}, {})), (None, b"{not json at all")):
            task_id = str(uuid.uuid4())
            extra: dict[str, Any] = ({"serializer": serializer} if serializer else
                                     {"content_type": "application/json", "content_encoding": "utf-8"})
            producer.publish(body, routing_key="stoq-collect", exchange="",
                             headers={"task": "stoq.collect", "id": task_id, "lang": "py", "argsrepr": "()"}, **extra)
    deadline = time.monotonic() + 30
    pattern = (r"Refusing to deserialize untrusted content of type pickle", r"Can't decode message body")
    while not all(re.search(p, one.log.read_text()[len(log_before):]) for p in pattern):
        assert time.monotonic() < deadline, one.log.read_text()[len(log_before):]
        time.sleep(0.2)
    assert not created.exists()  # the pickle was never loaded
    r = redis.Redis.from_url(one.env["STOQ_BROKER_URL"])
    assert r.llen("stoq-collect") == 0  # taken off the queue, not left to come back
    # and the worker still serves
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"still fine")
    got = one.stoq("submit", str(ok), "--workers", "segv", "--format", "json", timeout=120)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)[0]["results"][0]["workers"] == {"segv": {"crashed": False}}


def test_embedded_twenty_poison_copies_cost_one_death(tmp_path: Path, testplugins_site: Path) -> None:
    """The embedded pool skips a killer plugin on that content in every later copy (one death, where
    each copy used to die once)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(20):
        (inputs / f"p{i:02}.bin").write_bytes(b"SEGV poison")
    (inputs / "fine.bin").write_bytes(b"fine")
    runs = tmp_path / "segv.log"
    env = embedded_env(tmp_path, testplugins_site) | {"TESTPLUGINS_SEGV_LOG": str(runs)}
    got = subprocess.run([str(BIN / "stoq"), "scan", str(inputs), "--workers", "segv", "--jobs", "1", "--format",
                          "jsonl"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert got.returncode == 1, got.stderr
    docs = docs_by_name(got)
    assert len(runs.read_text().splitlines()) == 1
    for i in range(20):
        (error,) = docs[f"p{i:02}.bin"]["errors"]
        assert (error["plugin"], error["kind"]) == ("segv", "crash") and "signal 11" in error["message"]
    assert docs["fine.bin"]["errors"] == []


def test_embedded_outside_kill_is_retried(tmp_path: Path, testplugins_site: Path) -> None:
    path = tmp_path / "nap.bin"
    path.write_bytes(b"NAP healthy")
    env = embedded_env(tmp_path, testplugins_site)
    proc = subprocess.Popen([str(BIN / "stoq"), "scan", str(path), "--workers", "napper", "-o", "napper.seconds=5",
                             "--jobs", "1", "--format", "json"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # the pool's worker is the stoq process's child; it naps 5 s once it has the file (any kill while
    # it holds the file is an outside kill, retried: the assertions hold wherever it lands)
    while not children(proc.pid):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(1)
    (worker,) = children(proc.pid)
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    (doc,) = json.loads(out)
    assert doc["errors"] == [] and doc["results"][0]["workers"] == {"napper": {"napped": 5.0}}


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_charges_and_verdicts_on_redis() -> None:
    """The counting rule alone (no worker): outside kills forgiven once, fatal and timeout counted, a
    hard-limit kill under a shorter limit not held against a longer one, copies share one record."""
    from stoq.tasks import guard as gd

    r = redis.Redis.from_url(redis_url(13))
    a, b, c = (hashlib.sha256(x).hexdigest() for x in (b"unit-a", b"unit-b", b"unit-c"))
    for sha in (a, b, c):
        r.delete(gd.blame_key("p", sha))
    gd.charge(r, "p", a, "outside")
    gd.charge(r, "p", a, "outside")
    gd.charge(r, "p", b, "fatal")
    gd.charge(r, "p", c, "timeout", 1.0)
    gd.charge(r, "p", c, "timeout", 1.0)
    assert gd.verdicts(r, "p", [a, b, c, a], 2) == {c: ("timeout", f"p on this content: exceeded its 1 s limit in native "
                                                       f"code; worker killed 2 times; quarantined (2 timeout)")}
    assert gd.verdicts(r, "p", [c], 2, time_limit=30.0) == {}  # given longer, it runs again
    gd.charge(r, "p", a, "outside")  # a third outside kill: 3 - 1 forgiven = 2
    gd.charge(r, "p", b, "fatal")
    got = gd.verdicts(r, "p", [a, b], 2)
    assert got == {a: ("crash", "p on this content: the worker process died 2 times; quarantined (3 outside)"),
                   b: ("crash", "p on this content: the worker process died 2 times; quarantined (2 fatal)")}
    assert gd.verdicts(r, "other", [a, b], 2) == {}  # by plugin too
    assert 0 < r.ttl(gd.blame_key("p", a)) <= gd.BLAME_TTL


# -- the publisher's and collector's own steps: libmagic's typing and the dispatch rules -------------------

BEGIN_URL = redis_url(13)

CHARGE = r"""
import os, signal, sys
from stoq.tasks import guard as gd
from stoq.tasks.pipeline import Beginning
from stoq.tasks.plumbing import connect

where, sha256 = sys.argv[2], sys.argv[3]
guard = gd.process_guard(connect(sys.argv[1]))
beginning = Beginning(guard, sha256)  # what begin_waves hands Engine.begin
beginning.enter("libmagic", sha256)
if where in ("dispatch", "between"):
    beginning.leave()  # libmagic returned: the dispatch rules run
if where == "between":
    guard.leave()  # the payload is begun
print(guard.pid, flush=True)
os.kill(os.getpid(), signal.SIGSEGV)
"""


@pytest.mark.parametrize("where", ["libmagic", "dispatch", "between"])
def test_a_death_while_a_payload_is_begun_is_charged_to_its_step_and_content(where: str) -> None:
    """A real worker-like process with its guard dies by SIGSEGV while ``Beginning`` says libmagic
    types a payload, or while its dispatch rules run, or after it was begun: the guard charges the
    step on that content, or nothing."""
    from stoq.tasks import guard as gd

    r = redis.Redis.from_url(BEGIN_URL)
    sha256 = hashlib.sha256(f"begun {where} {uuid.uuid4()}".encode()).hexdigest()
    proc = subprocess.run([str(BIN / "python"), "-c", CHARGE, BEGIN_URL, where, sha256], capture_output=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGSEGV, proc.stderr
    guard_pid = int(proc.stdout)
    deadline = time.monotonic() + 20
    while Path(f"/proc/{guard_pid}").exists():  # the guard charges, then exits
        assert time.monotonic() < deadline, "the guard outlived its worker"
        time.sleep(0.05)
    records = {step: {k.decode(): v.decode() for k, v in r.hgetall(gd.blame_key(step, sha256)).items()}
               for step in ("libmagic", "dispatch")}
    expected = {"libmagic": {}, "dispatch": {}}
    if where != "between":
        expected[where] = {"fatal": "1"}
    assert records == expected


BEGIN = r"""
import hashlib, json, sys
from stoq.engine import Pending
from stoq.limits import Budget
from stoq.tasks import pipeline
from stoq.tasks.engines import engine_for
from stoq.tasks.plumbing import connect, profile_of, put_profile
from stoq.tasks.scans import ScanState
from stoq.tasks.settings import worker_settings

r = connect(sys.argv[1])
profile = put_profile(r, profile_of(worker_settings().model_copy(update={"workers": ["entropy"]})))
eng = engine_for(r, profile)
waves = []
for i, text in enumerate(sys.argv[2:]):
    content = text.encode()
    sha256 = hashlib.sha256(content).hexdigest()
    eng.archive.put(sha256, content)
    waves.append((ScanState(f"scan{i}", "2026-12-06T00:00:00Z", {}, profile, None, eng.limits, Budget(eng.limits)),
                  [Pending(None, f"f{i}.txt", sha256=sha256, known_size=len(content))]))
eng.archive.flush()
parts = pipeline.begin_waves(r, waves, "wave-1")
print(json.dumps({"pending": [scan.pending for scan, _ in waves],
                  "parts": {plugin: [ref["sha256"] for ref in refs] for (_, plugin), refs in parts.items()}}))
"""


def test_a_payload_that_killed_its_worker_while_being_begun_is_quarantined_by_content(tmp_path: Path) -> None:
    """Deaths charged to ``libmagic`` or ``dispatch`` on a content (by any earlier task, any copy)
    reach ``quarantine_after``: every task that begins that content again types it
    ``application/octet-stream`` without libmagic, skips the dispatch rules and says why; its batch
    mates, and a content charged fewer times, are begun as usual."""
    from stoq.tasks import guard as gd

    r = redis.Redis.from_url(BEGIN_URL)
    texts = [f"{what} {uuid.uuid4()}" for what in ("typing killer", "dispatch killer", "once", "fine")]
    typing, dispatch, once, fine = (hashlib.sha256(t.encode()).hexdigest() for t in texts)
    for step, sha256, causes in (("libmagic", typing, ("fatal", "fatal")), ("dispatch", dispatch, ("fatal", "outside", "outside")),
                                 ("libmagic", once, ("fatal",)), ("dispatch", once, ("outside",))):
        for cause in causes:
            gd.charge(r, step, sha256, cause, 60.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {
        "STOQ_ARCHIVE": str(tmp_path / "archive"), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([str(BIN / "python"), "-c", BEGIN, BEGIN_URL, *texts], env=env, cwd=tmp_path,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    pending = [entry for (entry,) in got["pending"]]
    mimes = [entry["record"]["mime"] for entry in pending]
    assert mimes == ["application/octet-stream", "application/octet-stream", "text/plain", "text/plain"]
    typing_why = "libmagic on this content: the worker process died 2 times; quarantined (2 fatal)"
    dispatch_why = "dispatch on this content: the worker process died 2 times; quarantined (1 fatal, 2 outside)"
    ids = [entry["record"]["payload_id"] for entry in pending]
    assert [entry["errors"] for entry in pending] == [
        [{"payload_id": ids[0], "plugin": "libmagic", "kind": "crash", "message": typing_why},
         {"payload_id": ids[0], "plugin": "dispatch", "kind": "error", "message": f"dispatch rules skipped: {typing_why}"}],
        [{"payload_id": ids[1], "plugin": "libmagic", "kind": "crash", "message": dispatch_why},
         {"payload_id": ids[1], "plugin": "dispatch", "kind": "error",
          "message": f"dispatch rules skipped: {dispatch_why}"}],
        [], []]
    assert got["parts"] == {"entropy": [typing, dispatch, once, fine]}  # the workers still run on each
