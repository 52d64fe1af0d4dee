"""Durability (issue 15, test 1): ``kill -9`` at a random point of a run, drawn from a seed: of one
pool process (the worker replaces it), and of the worker's main process with its whole tree (a
crashed machine; a new worker is started in the same place). Each case ends with every submitted
file stored once, no duplicate rows and no error entry (``assert_stored_once``)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from test_cluster import BIN, start
from test_durability import YARA, env, pool_of, query, small_files, wait_finished, assert_stored_once  # noqa: F401

pytestmark = [pytest.mark.durability, pytest.mark.postgres]

FILES = 30
#: Two seeds a case in the suite; a longer run: ``STOQ_TEST_KILL_SEEDS=1,2,3,4,5,6,7,8 pytest
#: tests/test_durability_kills.py`` (docs/reliability.md).
SEEDS = tuple(int(seed) for seed in os.environ.get("STOQ_TEST_KILL_SEEDS", "1,2").split(","))
#: Every scan's wave waits this long before the sweeper sends its unanswered parts again: longer than
#: a new worker takes to start and run what waits in the queues, short enough to end a case whose
#: plugin task was lost.
SWEEP_AFTER = "8"


def tree_of(pid: int) -> list[int]:
    """``pid``'s descendants (pool processes, their guards), parents first."""
    found, todo = [], [pid]
    while todo:
        children = pool_of(todo.pop())
        found += children
        todo += children
    return found


def held_by_the_worker(env: dict[str, str]) -> list[tuple[str, str]]:
    """(task name, queue) of each message the broker holds unacknowledged (kombu's ``unacked`` hash in
    the test's own broker database: only this worker's)."""
    r = redis.Redis.from_url(env["STOQ_BROKER_URL"])
    held = []
    for raw in r.hvals("unacked"):
        message, _exchange, routing_key = json.loads(raw)
        held.append((message["headers"]["task"], routing_key))
    return sorted(held)


def stored(env: dict[str, str]) -> int:
    return query(env, "SELECT count(*) FROM scans")[0][0]


def submit(env: dict[str, str], where: Path, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "stoq"), "submit", *map(str, files), *YARA, "--no-wait"], env=env, cwd=where,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_a_publish(log: Path, offset: int = 0, timeout: float = 30) -> None:
    """Until the worker's log, past ``offset``, says it took a ``stoq.publish``."""
    deadline = time.monotonic() + timeout
    while "stoq.publish[" not in log.read_text()[offset:]:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.005)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_of_the_worker_main_process_at_a_random_point_loses_no_file(env: dict[str, str], tmp_path: Path,
                                                                            seed: int) -> None:
    """The main process and its tree killed ``delay`` (0 to 0.8 s, from the seed) after it took its
    first ``stoq.publish``; a new worker in the same place. What the dead worker held unacknowledged
    stays in Redis for the visibility timeout (6 h): a lost publish comes back from the ledger
    (``recover_after``), a lost plugin task is sent again by the sweeper (``sweep_after``, then
    ``wave_resends``), a lost collect is done by the sweeper (its wave answered in full)."""
    rng = random.Random(seed)
    delay = rng.uniform(0, 0.8)
    env = env | {"STOQ_SWEEP_AFTER": SWEEP_AFTER}
    files = small_files(tmp_path / "in", FILES)
    first = start(tmp_path, env, "-c", "2")
    began = time.monotonic()
    client = submit(env, tmp_path, files)
    again = None
    try:
        wait_for_a_publish(first.log)
        time.sleep(delay)
        tree = tree_of(first.worker.pid)
        for pid in (first.worker.pid, *tree):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.worker.wait()
        held, before = held_by_the_worker(env), stored(env)
        again = start(tmp_path, env, "-c", "2", fresh=False)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        ids = out.decode().split()
        assert len(ids) == FILES
        wait_finished(env, FILES, timeout=45)
        assert_stored_once(env, ids, files)
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] seed {seed}: main process killed {delay:.2f} s after its first publish, "
              f"{before}/{FILES} stored then, held {held}; all {FILES} stored once, attempts {attempts}, "
              f"{time.monotonic() - began:.1f} s")
    finally:
        client.kill()
        if again is not None:
            again.stop()


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_of_a_pool_process_at_a_random_point_loses_no_file(env: dict[str, str], tmp_path: Path,
                                                                  seed: int) -> None:
    """One of the two pool processes (chosen by the seed) killed ``delay`` (0 to 0.8 s, from the seed)
    after the worker took its first ``stoq.publish``: the worker forks another, the task it ran is
    given back (reject on worker loss) and run again; an outside kill is forgiven, nobody quarantined."""
    rng = random.Random(seed)
    delay = rng.uniform(0, 0.8)
    env = env | {"STOQ_SWEEP_AFTER": SWEEP_AFTER}
    files = small_files(tmp_path / "in", FILES)
    worker = start(tmp_path, env, "-c", "2")
    began = time.monotonic()
    client = submit(env, tmp_path, files)
    try:
        wait_for_a_publish(worker.log)
        time.sleep(delay)
        pool = sorted(pool_of(worker.worker.pid))
        assert len(pool) == 2, pool
        victim = rng.choice(pool)
        os.kill(victim, signal.SIGKILL)
        before = stored(env)
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        ids = out.decode().split()
        assert len(ids) == FILES
        wait_finished(env, FILES, timeout=30)
        assert_stored_once(env, ids, files)
        assert worker.worker.poll() is None
        attempts = query(env, "SELECT attempts, count(*) FROM scan_ledger GROUP BY attempts ORDER BY attempts")
        print(f"[durability] seed {seed}: pool process {pool.index(victim) + 1} of 2 killed {delay:.2f} s after "
              f"the first publish, {before}/{FILES} stored then; all {FILES} stored once, attempts {attempts}, "
              f"{time.monotonic() - began:.1f} s")
    finally:
        client.kill()
        worker.stop()


def test_kill_9_of_the_worker_main_process_while_a_plugin_runs_loses_no_answer(env: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """The case the random kills above rarely hit on a fast machine: the main process and its tree
    killed while a plugin task runs. On Redis that task stays unacknowledged for the visibility
    timeout (6 h); the sweeper sends the wave's unanswered part again after ``sweep_after``, the new
    worker runs it, and every file gets the plugin's answer: no ``timeout`` entry, nothing twice."""
    from test_durability_services import NAPPER, assert_napped, nap_files

    env = env | {"STOQ_SWEEP_AFTER": SWEEP_AFTER}
    files = nap_files(tmp_path / "in", 20)  # 0.2 s each: the kill lands inside a napper task
    first = start(tmp_path, env, "-c", "2")
    again = None
    try:
        got = first.stoq("submit", *map(str, files), *NAPPER, "--no-wait", timeout=60)
        assert got.returncode == 0, got.stderr
        ids = got.stdout.decode().split()
        deadline = time.monotonic() + 30
        while b"napping" not in first.log.read_bytes():
            assert time.monotonic() < deadline, first.log.read_text()[-3000:]
            time.sleep(0.01)
        for pid in (first.worker.pid, *tree_of(first.worker.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.worker.wait()
        held = held_by_the_worker(env)
        assert ("stoq.worker.napper", "napper") in held, held  # a plugin task was lost with the worker
        again = start(tmp_path, env, "-c", "2", fresh=False)
        wait_finished(env, len(files), timeout=60)
        assert_stored_once(env, ids, files)
        assert_napped(env, len(files))
        assert "sweeper sent again the unanswered plugin tasks" in first.log.read_text()
    finally:
        if again is not None:
            again.stop()
