"""Durability (issue 15) against the services themselves: a worker's warm shutdown under load, Redis
restarted with AOF, RabbitMQ unreachable mid-run and restarted mid-run (quorum queues), PostgreSQL
unreachable for 20 s, and 20,000 files through one worker. Each ends with exactly one stored document
per submitted file, no duplicate rows and no error entry.

Only private services are restarted: a ``redis-server`` of the test's own (ephemeral port, its own
``--dir``), and TCP proxies (``tcpgate.Gate``) in front of the machine's RabbitMQ and PostgreSQL that the test
closes and opens again. The one exception is the machine's RabbitMQ node, restarted in place
(``rabbitmqctl stop_app``/``start_app``) by ``test_rabbitmq_restarted_mid_run_loses_no_file``, which
starts it again whatever happens."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from test_cluster import BIN, Cluster, cluster_env, fresh_database
from test_cluster import start as cluster_start
from test_durability import assert_stored_once, query, small_files, wait_finished
from tcpgate import Gate, free_port

pytestmark = [pytest.mark.durability, pytest.mark.postgres]

DB = "stoq_faults"

#: A plugin slow enough that the faults below land while its tasks run (files containing NAP): 40
#: files keep a worker's two processes busy for 4 s.
NAP = 0.2
NAPPER = ("--workers", "napper", "-o", f"napper.seconds={NAP}")
#: The RabbitMQ restart's nap: its stop must land mid-run however slow rabbitmqctl is.
SLOW_NAP = 0.5


def nap_files(where: Path, count: int) -> list[Path]:
    """``count`` unique small files that the napper plugin sleeps on."""
    files = small_files(where, count)
    for f in files:
        f.write_bytes(b"NAP " + f.read_bytes())
    return files


def assert_napped(env: dict[str, str], count: int, seconds: float = NAP) -> None:
    """Every file got the napper's one answer, ``{"napped": seconds}``."""
    rows = query(env, "SELECT plugin, result::text, count(*) FROM plugin_results GROUP BY plugin, result::text")
    assert rows == [("napper", f'{{"napped": {seconds}}}', count)], rows


def submitted_ids(got: subprocess.CompletedProcess[bytes], count: int) -> list[str]:
    assert got.returncode == 0, got.stderr.decode()[-3000:]
    ids = got.stdout.decode().split()
    assert len(ids) == len(set(ids)) == count
    return ids


def finished_count(env: dict[str, str]) -> int:
    return int(query(env, "SELECT count(*) FROM scan_ledger WHERE state = 'finished'")[0][0])


class Laps:
    """Seconds between the marks of a test's phases, printed with its figures (``-s``)."""

    def __init__(self) -> None:
        self.last, self.marks = time.monotonic(), []

    def __call__(self, label: str) -> None:
        now = time.monotonic()
        self.marks.append(f"{label} {now - self.last:.1f}")
        self.last = now

    def __str__(self) -> str:
        return "; ".join(self.marks)


def wait_until(what: str, check: Any, timeout: float = 60, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(every)


def start(work: Path, env: dict[str, str], *args: str, fresh: bool = True) -> Cluster:
    """``test_cluster.start``, ready once the worker's log says so."""
    return cluster_start(work, env, *args, fresh=fresh)


# ----------------------------------------------------------------------------------- private services

class PrivateRedis:
    """A ``redis-server`` of the test's own, on an ephemeral port, persisting to ``where`` (AOF,
    ``appendfsync everysec``, as docs/reliability.md recommends)."""

    def __init__(self, where: Path, aof: bool = True) -> None:
        self.dir, self.aof = where, aof
        where.mkdir()
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes" if self.aof else "no", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(self.dir / "redis.log")])
        wait_until("private redis-server did not start", self._answers, timeout=20)

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def restart(self, down: float) -> None:
        """SIGTERM (Redis shuts down: the AOF is synced first), ``down`` seconds away, then started again."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=30)
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture()
def env(tmp_path: Path, testplugins_site: Path, redis_server: PrivateRedis) -> dict[str, str]:
    """A fresh migrated database and a private Redis (broker: database 0, scans: database 1), so that
    nothing else on the machine touches them; a short recovery bound."""
    fresh_database(DB)
    env = cluster_env(tmp_path, testplugins_site, (0, 1), DB) | {
        "STOQ_BROKER_URL": redis_server.url(0), "STOQ_RESULT_BACKEND": redis_server.url(1),
        "STOQ_RECOVER_AFTER": "3", "STOQ_MAX_ATTEMPTS": "3"}
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    return env


# ---------------------------------------------------------------------------------------------- tests

def test_a_warm_shutdown_under_load_loses_no_file(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM (Celery's warm shutdown) of a worker as its first plugin task starts, the client still
    sending: the worker finishes what it runs, gives back what it holds, and a new worker completes
    the rest; the ledger publishes nothing again."""
    lap = Laps()
    files = nap_files(tmp_path / "in", 30)
    first = start(tmp_path, env, "-c", "2")
    lap("worker started")
    client = subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, files), *NAPPER, "--no-wait"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    second = None
    try:
        wait_until("no napper task ran", lambda: b"napping" in first.log.read_bytes(), timeout=30, every=0.01)
        os.kill(first.worker.pid, signal.SIGTERM)
        lap("first task")
        first.worker.wait(timeout=60)
        lap("warm shutdown")
        stored_by_first = finished_count(env)
        (tmp_path / "again").mkdir()
        second = start(tmp_path / "again", env, "-c", "2", fresh=False)
        lap("second started")
        out, err = client.communicate(timeout=60)
        ids = submitted_ids(subprocess.CompletedProcess(client.args, client.returncode, out, err), len(files))
        wait_finished(env, len(files))
        lap("finished")
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files))
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts")
        assert attempts == [(1, len(files))]  # nothing was lost: the ledger published nothing again
        assert stored_by_first < len(files)  # the shutdown did land mid-run
        print(f"[durability] warm shutdown: {len(files)} submitted, {stored_by_first} stored before it, "
              f"{len(files)} in all; {lap}")
    finally:
        client.kill()
        first.stop()
        if second is not None:
            second.stop()


def test_redis_restarted_with_aof_mid_run_loses_no_file(env: dict[str, str], tmp_path: Path,
                                                        redis_server: PrivateRedis) -> None:
    """The broker's and the scans' Redis (one private ``redis-server``, AOF) shut down and started
    again while plugin tasks run: its data comes back from the AOF, the tasks and the sweeper retry,
    and every file is stored once, with no error entry."""
    lap = Laps()
    server = redis_server
    files = nap_files(tmp_path / "in", 40)
    c = start(tmp_path, env, "-c", "2")
    lap("worker started")
    client = subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, files), *NAPPER, "--no-wait"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until("no napper task ran", lambda: b"napping" in c.log.read_bytes(), timeout=30, every=0.01)
        lap("first task")
        server.restart(down=2)
        lap("restarted")
        stored_before = finished_count(env)
        out, err = client.communicate(timeout=60)
        ids = submitted_ids(subprocess.CompletedProcess(client.args, client.returncode, out, err), len(files))
        wait_finished(env, len(files), timeout=60)
        lap("finished")
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files))
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] redis (AOF) restarted: {len(files)} submitted, {stored_before} stored before, "
              f"{len(files)} in all; attempts {attempts}; {lap}")
    finally:
        client.kill()
        c.stop()


@pytest.fixture()
def rabbit_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own (its quorum queues never meet the classic ones of
    ``/``), deleted afterwards."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl (rabbitmq-server)")
    vhost = f"stoq-faults-{os.getpid()}"
    made = subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=60)
    try:
        yield vhost
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.mark.rabbitmq
def test_rabbitmq_unreachable_mid_run_loses_no_file(env: dict[str, str], tmp_path: Path, rabbit_vhost: str) -> None:
    """RabbitMQ as the broker, with quorum queues (``STOQ_QUEUE_TYPE=quorum``), reached through a
    proxy that is closed for 3 s while plugin tasks run: every connection to the broker drops (the
    worker's and the client's), RabbitMQ requeues what the worker held, the worker reconnects and
    the redelivered tasks change nothing that was done."""
    lap = Laps()
    gate = Gate(5672)
    broker = f"amqp://guest:guest@127.0.0.1:{gate.port}/{rabbit_vhost}"
    # A task sent into the cut can vanish (no publisher confirms): the sweeper sends its wave's part
    # again after sweep_after (its 1 h default would outlast the test).
    amqp = env | {"STOQ_BROKER_URL": broker, "STOQ_QUEUE_TYPE": "quorum", "STOQ_SWEEP_AFTER": "15"}
    c = start(tmp_path, amqp, "-c", "2")
    lap("worker started")
    try:
        files = nap_files(tmp_path / "in", 40)
        ids = submitted_ids(c.stoq("submit", *map(str, files), *NAPPER, "--no-wait", timeout=60), len(files))
        wait_until("no napper task ran", lambda: b"napping" in c.log.read_bytes(), timeout=30, every=0.01)
        lap("submitted")
        gate.close()
        time.sleep(3)
        gate.open()
        wait_finished(env, len(files), timeout=90)
        lap("finished")
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files))
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", rabbit_vhost, "name", "type"],
                                capture_output=True, text=True, timeout=60).stdout
        types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
        assert [types.get(q) for q in ("stoq", "stoq-collect", "napper")] == ["quorum"] * 3, listed
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] rabbitmq cut 3 s: {len(files)} submitted, {len(files)} stored; attempts {attempts}; {lap}")
    finally:
        c.stop()
        gate.close()


def rabbitmqctl(*args: str, timeout: float = 120) -> float:
    """Runs ``rabbitmqctl -q ARGS`` on the machine's node; returns the seconds it took."""
    began = time.monotonic()
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}"
    return time.monotonic() - began


def rabbit_answers(vhost: str) -> bool:
    """Whether the node's AMQP listener takes a login on ``vhost``."""
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest", virtual_host=vhost,
                           connect_timeout=2)
    try:
        conn.connect()
        return True
    except (OSError, amqp.exceptions.AMQPError):
        return False
    finally:
        try:
            conn.close()
        except (OSError, amqp.exceptions.AMQPError):
            pass


@pytest.mark.rabbitmq(exclusive=True)  # the node itself restarts: under xdist, no other RabbitMQ test meanwhile
def test_rabbitmq_restarted_mid_run_loses_no_file(env: dict[str, str], tmp_path: Path, rabbit_vhost: str) -> None:
    """The machine's RabbitMQ node itself restarted while plugin tasks run (quorum queues,
    ``STOQ_QUEUE_TYPE=quorum``): ``rabbitmqctl stop_app``, 2 s, ``start_app``. The node closes every
    connection and keeps the quorum queues' messages (ready and unacknowledged) on disk; the worker
    reconnects and every file is stored once. The node is started again whatever happens (other tests
    and CI need it)."""
    lap = Laps()
    broker = f"amqp://guest:guest@127.0.0.1:5672/{rabbit_vhost}"
    amqp_env = env | {"STOQ_BROKER_URL": broker, "STOQ_QUEUE_TYPE": "quorum"}
    c = start(tmp_path, amqp_env, "-c", "2")
    lap("worker started")
    stopped = False
    try:
        files = nap_files(tmp_path / "in", 40)
        # 10 s of naps on two processes: rabbitmqctl's own start (an Erlang VM) takes seconds on a busy machine
        ids = submitted_ids(c.stoq("submit", *map(str, files), "--workers", "napper", "-o", f"napper.seconds={SLOW_NAP}",
                                   "--no-wait", timeout=60), len(files))
        wait_until("no napper task ran", lambda: b"napping" in c.log.read_bytes(), timeout=30, every=0.01)
        lap("submitted")
        stopped = True
        stop = rabbitmqctl("stop_app")
        lap("stop_app")
        stored_while_down = finished_count(env)
        time.sleep(2)
        lap("down")
        begun = rabbitmqctl("start_app")
        rabbitmqctl("await_startup", "--timeout", "60")
        wait_until("RabbitMQ does not take logins again", lambda: rabbit_answers(rabbit_vhost), timeout=60, every=0.1)
        stopped = False
        lap("start_app")
        wait_finished(env, len(files), timeout=60)
        lap("finished")
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files), SLOW_NAP)
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", rabbit_vhost, "name", "type"],
                                capture_output=True, text=True, timeout=60).stdout
        types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
        assert [types.get(q) for q in ("stoq", "stoq-collect", "napper")] == ["quorum"] * 3, listed
        assert stored_while_down < len(files)  # the restart did land mid-run
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] rabbitmq restarted: {len(files)} submitted, {stored_while_down} stored when it "
              f"stopped, {len(files)} in all; stop_app {stop:.1f} s, start_app {begun:.1f} s; "
              f"attempts {attempts}; {lap}")
    finally:
        c.stop()
        if stopped:  # the test failed with the node down: start it again before anything else runs
            subprocess.run(["rabbitmqctl", "-q", "start_app"], capture_output=True, timeout=120)
            subprocess.run(["rabbitmqctl", "-q", "await_startup", "--timeout", "120"], capture_output=True,
                           timeout=150)


@pytest.mark.slow  # the 20 s it is away, then what it took back
def test_postgresql_unreachable_for_20_s_mid_run_loses_no_file(env: dict[str, str], tmp_path: Path) -> None:
    """The workers reach PostgreSQL through a proxy that is closed (connections cut, new ones refused)
    for 20 s while scans finish: the documents that could not be saved are saved once it is back,
    once each."""
    lap = Laps()
    gate = Gate(5432)
    direct = env["STOQ_DATABASE_URL"]
    through = direct.replace("127.0.0.1:5432", f"127.0.0.1:{gate.port}")
    assert through != direct
    c = start(tmp_path, env | {"STOQ_DATABASE_URL": through}, "-c", "2")
    lap("worker started")
    try:
        files = nap_files(tmp_path / "in", 40)
        ids = submitted_ids(c.stoq("submit", *map(str, files), *NAPPER, "--no-wait", timeout=60), len(files))
        wait_until("no napper task ran", lambda: b"napping" in c.log.read_bytes(), timeout=30, every=0.01)
        lap("submitted")
        gate.close()
        cut = time.monotonic()
        stored_before = finished_count(env)
        time.sleep(20)
        stored_during = finished_count(env)
        gate.open()
        wait_finished(env, len(files), timeout=90)
        back = time.monotonic() - cut - 20
        assert stored_during == stored_before < len(files)  # nothing reached the database while it was away
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files))
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] postgresql away 20 s: {len(files)} submitted, {stored_before} stored before, "
              f"all {len(files)} {back:.1f} s after it came back; attempts {attempts}; {lap}")
    finally:
        c.stop()
        gate.close()


# -------------------------------------------------------------------------------------------- load

def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a worker: its main process, its pool, their guards)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


class Sampler:
    """Samples a process tree's resident memory (sum of VmRSS) and open files (entries of
    /proc/PID/fd), and a Redis server's used memory, every ``every`` seconds; keeps the peaks."""

    def __init__(self, pid: int, r: redis.Redis, every: float = 0.5) -> None:
        self.pid, self.r, self.every = pid, r, every
        self.rss = self.fds = self.used = self.processes = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            rss = fds = 0
            tree = process_tree(self.pid)
            for p in tree:
                try:
                    status = Path(f"/proc/{p}/status").read_text()
                    rss += int(status.split("VmRSS:")[1].split()[0]) * 1024
                    fds += len(os.listdir(f"/proc/{p}/fd"))
                except (OSError, IndexError):
                    continue
            self.rss, self.fds = max(self.rss, rss), max(self.fds, fds)
            self.processes = max(self.processes, len(tree))
            try:
                self.used = max(self.used, int(self.r.info("memory")["used_memory"]))
            except redis.RedisError:
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


LOAD_FILES = 20_000


@pytest.mark.slow
def test_20000_files_through_one_worker_every_document_stored(env: dict[str, str], tmp_path: Path,
                                                             redis_server: PrivateRedis) -> None:
    """20,000 unique small files through ``stoq submit --no-wait`` to one worker (``-c 2``, the
    ``hash`` plugin): every document stored once; the peaks of the broker's memory, the worker's
    resident memory and open files are reported (docs/reliability.md)."""
    server = redis_server
    private = env | {"STOQ_RECOVER_AFTER": "900", "STOQ_MEASURE_MESSAGES": ""}
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(LOAD_FILES):
        (inputs / f"{i:05}.txt").write_bytes(f"load file {i}\n".encode())
    c = start(tmp_path, private, "-c", "2")
    sampler = Sampler(c.worker.pid, server.client())
    try:
        started = time.monotonic()
        got = c.stoq("submit", str(inputs), "--recursive", "--workers", "hash", "--no-wait", timeout=600)
        ids = submitted_ids(got, LOAD_FILES)
        sent = time.monotonic() - started
        wait_finished(env, LOAD_FILES, timeout=600)
        took = time.monotonic() - started
        sampler.stop()
        assert sorted(r[0] for r in query(env, "SELECT scan_id FROM scans")) == sorted(ids)
        assert query(env, "SELECT plugin, count(*), count(DISTINCT scan_id) FROM plugin_results GROUP BY plugin") == [
            ("hash", LOAD_FILES, LOAD_FILES)]
        assert query(env, "SELECT count(*) FROM scan_errors") == [(0,)]
        assert query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts") == [(1, LOAD_FILES)]
        peak = int(server.client().info("memory")["used_memory_peak"])
        print(f"[durability] load: {LOAD_FILES} files in {took:.1f} s (sent in {sent:.1f} s); redis used_memory_peak "
              f"{peak / 2**20:.1f} MiB (sampled {sampler.used / 2**20:.1f} MiB); worker RSS peak "
              f"{sampler.rss / 2**20:.1f} MiB over {sampler.processes} processes; open files peak {sampler.fds}")
    finally:
        sampler.stop()
        c.stop()
