"""A ``stoq scan`` stopped early (its output closed, SIGINT, SIGTERM, its parent killed) loses no
document it printed and leaves no process behind: real processes, a real pipe into ``head``, signals to
a real process group, the SQLite store read with ``sqlite3`` and ``stoq results``.

Processes of a scan are found by a marker in their environment (every process a scan starts inherits
it), read from ``/proc``."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from stoq.embedded import BATCH

Run = Callable[..., subprocess.CompletedProcess[bytes]]
STOQ = Path(sys.executable).parent / "stoq"

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc (Linux)")


def marked(mark: str) -> list[int]:
    """Pids of the live processes whose environment holds ``STOQ_TEST_MARK=mark``."""
    needle = f"STOQ_TEST_MARK={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != b"Z":  # a zombie has ended; only its exit status is left
            found.append(int(entry))
    return found


def wait_gone(mark: str, patience: float = 20.0) -> list[int]:
    """The marked processes still alive after at most ``patience`` seconds (a bound, not a timing)."""
    deadline = time.monotonic() + patience
    left = marked(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked(mark)
    return left


def stored_ids(database: Path) -> set[str]:
    with sqlite3.connect(database) as db:
        return {row[0] for row in db.execute("SELECT scan_id FROM scans")}


def small_files(top: Path, count: int) -> list[Path]:
    top.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = top / f"f{i:05d}.txt"
        path.write_bytes(f"small file number {i}, {uuid.uuid4()}\n".encode())
        paths.append(path)
    return paths


@pytest.fixture()
def mark(stoq_env: dict[str, str]) -> str:
    value = uuid.uuid4().hex
    stoq_env["STOQ_TEST_MARK"] = value
    return value


def test_a_pipe_closed_by_head_stops_the_scan_and_stores_what_was_printed(
        tmp_path: Path, stoq_env: dict[str, str], mark: str, run_stoq: Run) -> None:
    # 500 documents (~700 B each) do not fit in the pipe: stoq meets the closed pipe mid-scan. The pipe is
    # a named one that head opens before stoq starts: on a busy machine (make test's parallel workers) a
    # head started with stoq could come up late, and stoq store most of the files before the pipe closes.
    small_files(tmp_path / "in", 500)
    script = (f'mkfifo out && {{ head -n 1 < out > first.txt & }}; "{STOQ}" scan in --recursive --jobs 2 2> err.txt > out; '
              f'echo "$?" > rc.txt; wait')
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=stoq_env, check=True, timeout=300)
    assert (tmp_path / "rc.txt").read_text().strip() == "141"
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("stoq: output closed: stopped after "), err
    printed = json.loads((tmp_path / "first.txt").read_text())["scan_id"]
    stored = stored_ids(tmp_path / "stoq.db")
    assert printed in stored
    assert len(stored) < 400  # stopped when the pipe closed, not after the last file
    got = run_stoq("results", printed, "--format", "jsonl")
    assert got.returncode == 0, got.stderr.decode()
    assert json.loads(got.stdout)["scan_id"] == printed
    assert wait_gone(mark) == []


def test_a_pipe_closed_after_the_last_document_still_stores_everything(
        tmp_path: Path, stoq_env: dict[str, str], run_stoq: Run) -> None:
    # The three documents sit in stdout's buffer until the end: the closed pipe is met at the last flush.
    files = small_files(tmp_path / "in", 3)
    proc = subprocess.Popen([str(STOQ), "scan", *map(str, files), "--jobs", "1"], cwd=tmp_path, env=stoq_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and err.startswith("stoq: output closed"), err
    assert len(stored_ids(tmp_path / "stoq.db")) == 3


#: Files before the sleeping one. A worker with more work queued sends its results in messages of up
#: to ``BATCH``: the worker that takes the sleeping file may hold up to ``BATCH - 1`` results of files
#: before it, which then wait with it. So the output stops somewhere in the last ``BATCH`` of these.
BEFORE = 2 * BATCH


def lines_until_stalled(proc: subprocess.Popen[bytes], most: int, stall: float = 3.0) -> tuple[list[bytes], queue.Queue[bytes | None]]:
    """The lines ``proc`` prints until it has printed ``most`` or printed nothing for ``stall`` seconds
    (after its first line); and the queue that the rest (then None, at the end) arrives in."""
    assert proc.stdout is not None
    arrived: queue.Queue[bytes | None] = queue.Queue()
    out = proc.stdout

    def read() -> None:
        for line in out:
            arrived.put(line)
        arrived.put(None)

    threading.Thread(target=read, daemon=True).start()
    lines = [arrived.get(timeout=120)]
    while len(lines) < most:
        try:
            line = arrived.get(timeout=stall)
        except queue.Empty:
            break
        assert line is not None, b"".join(lines)[-2000:]  # the scan must not end by itself
        lines.append(line)
    return [line for line in lines if line is not None], arrived


def interrupt_mid_scan(tmp_path: Path, stoq_env: dict[str, str], site: Path, signum: int) -> tuple[int, list[str], str]:
    """Scans ``BEFORE`` files, then one that blocks its worker's plugin (``sleeper``: an hour in native
    code), then 40 more, with two workers; once the output stops (the sleeping file's document never
    comes, and what follows waits for it), sends ``signum`` to the scan's process group. Returns the exit
    code, the printed ids and stderr."""
    small_files(tmp_path / "in", BEFORE)
    (tmp_path / "in" / "g-sleep.txt").write_bytes(b"SLEEP in native code, where no soft limit reaches\n")
    for i in range(40):
        (tmp_path / "in" / f"h{i:03d}.txt").write_bytes(f"after the sleeper {i} {uuid.uuid4()}\n".encode())
    env = dict(stoq_env, PYTHONPATH=str(site), PYTHONUNBUFFERED="1")  # each document reaches the pipe as written
    proc = subprocess.Popen([str(STOQ), "scan", "in", "--recursive", "--jobs", "2", "--workers", "sleeper"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stderr is not None
    lines, arrived = lines_until_stalled(proc, BEFORE)
    os.killpg(proc.pid, signum)
    proc.wait(timeout=120)
    err = proc.stderr.read()
    rest = list(iter(lambda: arrived.get(timeout=30), None))
    printed = [json.loads(line)["scan_id"] for line in lines + rest if line.strip()]
    return proc.returncode, printed, err.decode()


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")])
def test_a_signal_to_the_process_group_stores_every_printed_document_and_ends_every_process(
        tmp_path: Path, stoq_env: dict[str, str], mark: str, testplugins_site: Path, run_stoq: Run,
        signum: int, code: int, word: str) -> None:
    returncode, printed, err = interrupt_mid_scan(tmp_path, stoq_env, testplugins_site, signum)
    assert returncode == code, err
    assert "Traceback" not in err
    total = BEFORE + 41
    assert BEFORE - BATCH < len(printed) <= BEFORE
    assert err.startswith(f"stoq: {word}: stopped after {len(printed)} of {total} file(s) written; "), err
    stored = stored_ids(tmp_path / "stoq.db")
    assert set(printed) <= stored
    assert len(stored) < total  # the sleeping file was abandoned, not waited for
    got = run_stoq("results", printed[-1], "--format", "jsonl")
    assert got.returncode == 0 and json.loads(got.stdout)["scan_id"] == printed[-1]
    assert wait_gone(mark) == []  # the worker blocked in the plugin too


def test_workers_die_with_a_killed_parent(tmp_path: Path, stoq_env: dict[str, str], mark: str,
                                          testplugins_site: Path) -> None:
    small_files(tmp_path / "in", BEFORE)
    (tmp_path / "in" / "g-sleep.txt").write_bytes(b"SLEEP\n")
    env = dict(stoq_env, PYTHONPATH=str(testplugins_site), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(STOQ), "scan", "in", "--recursive", "--jobs", "2", "--workers", "sleeper"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines_until_stalled(proc, BEFORE)  # the workers have started; one is blocked in the plugin
    proc.kill()  # SIGKILL to the parent alone: no clean-up of its own runs
    proc.wait(timeout=60)
    assert wait_gone(mark) == []


def test_a_program_started_with_the_lifetime_preexec_dies_with_its_killed_parent(tmp_path: Path) -> None:
    """What the plugins' external tools (``plugins/decompress/tools.py``, ``_gpg.py``) are started with: a tool
    in its own session, whose worker is killed, is killed too instead of running on."""
    parent = ("import subprocess, sys, time; from stoq.lifetime import preexec; "
              "tool = subprocess.Popen(['sleep', '600'], preexec_fn=preexec(), start_new_session=True); "
              "print(tool.pid, flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    tool = int(proc.stdout.readline())
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    while alive(tool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(tool)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_finished_scan_says_where_it_stored_its_documents(tmp_path: Path, run_stoq: Run) -> None:
    files = small_files(tmp_path / "in", 3)
    got = run_stoq("scan", *map(str, files))
    assert got.returncode == 0, got.stderr
    assert got.stderr.decode() == f"stoq: 3 document(s) stored in {tmp_path / 'stoq.db'}\n"
    assert len(stored_ids(tmp_path / "stoq.db")) == 3
    quiet = run_stoq("scan", *map(str, files), "--no-store")
    assert quiet.returncode == 0 and quiet.stderr == b""


@pytest.mark.parametrize("args", [["results", "{id}"], ["results", "{id}", "--format", "table"],
                                  ["list", "--format", "json"]])
def test_any_command_whose_reader_is_gone_exits_141_without_a_traceback(
        tmp_path: Path, stoq_env: dict[str, str], run_stoq: Run, args: list[str]) -> None:
    """Not only `scan`: `stoq results ID | head -1` and `stoq list | head` meet a closed pipe too; they end
    with the documented 141 (not 1, which means "a document has errors"), and say nothing on stderr."""
    files = small_files(tmp_path / "in", 1)
    scanned = run_stoq("scan", str(files[0]), "--jobs", "1")
    assert scanned.returncode == 0, scanned.stderr
    scan_id = json.loads(scanned.stdout)["scan_id"]
    argv = [str(STOQ), *(a.format(id=scan_id) for a in args)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=stoq_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == "", err
