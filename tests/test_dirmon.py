"""``stoq dirmon`` as real processes on real directories: bursts, slow writers, a crash and restart,
polling, ``--move-to``/``--delete``, metadata and filters (embedded, SQLite store), and once against a
real cluster. Expected values are the files' own sha256 (hashlib), counted in the store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import ROOT

BIN = ROOT / ".venv" / "bin"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Monitor:
    """A running ``stoq dirmon`` and its store."""

    def __init__(self, proc: subprocess.Popen[bytes], db: Path, log: Path) -> None:
        self.proc, self.db, self.log = proc, db, log

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def stored(db: Path) -> dict[str, int]:
    """Documents per root sha256 in the store."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT root_sha256, count(*) FROM scans GROUP BY root_sha256").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        conn.close()


def sources(db: Path) -> list[dict[str, object]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [json.loads(s) for (s,) in conn.execute("SELECT source FROM scans ORDER BY scan_id")]
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], what: str, patience: float = 120) -> None:
    deadline = time.monotonic() + patience
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture()
def dirmon(stoq_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Monitor]]:
    started: list[Monitor] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Monitor:
        log = tmp_path / f"dirmon-{len(started)}.log"
        full = dict(stoq_env, STOQ_DISPATCH_RULES="none", **(env or {}))
        proc = subprocess.Popen([str(BIN / "stoq"), "dirmon", *args, "--report-every", "0.5"], env=full, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
        monitor = Monitor(proc, tmp_path / "stoq.db", log)
        started.append(monitor)
        wait_for(lambda: b"dirmon: watching" in log.read_bytes() or proc.poll() is not None, "dirmon to start", 60)
        assert proc.poll() is None, log.read_text()
        return monitor

    yield start
    for monitor in started:
        if monitor.proc.poll() is None:
            monitor.proc.kill()
            monitor.proc.wait()


def write_files(top: Path, n: int, prefix: str = "f") -> dict[str, str]:
    """``n`` small files of distinct content; their sha256 by name."""
    top.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        data = f"{prefix} {i} {os.urandom(4).hex()}\n".encode()
        (top / f"{prefix}{i:05d}.txt").write_bytes(data)
        out[f"{prefix}{i:05d}.txt"] = sha(data)
    return out


#: Files in the burst. They are written into two new directories, which makes the monitor scan the tree while
#: their own events arrive: each file must still be submitted once. docs/performance.md has 10,000 and 30,000.
BURST = 3000


@pytest.mark.slow
def test_a_burst_of_files_gives_one_document_each(dirmon: Callable[..., Monitor], tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    m = dirmon(str(watched), "--jobs", "2", "--batch", "1024")
    started = time.monotonic()
    half = BURST // 2
    expected = set(write_files(watched / "a", half, "a").values()) | set(write_files(watched / "b", half, "b").values())
    wait_for(lambda: len(stored(m.db)) >= BURST, f"{BURST} documents", 240)
    took = time.monotonic() - started
    assert m.stop() == 0
    counts = stored(m.db)
    assert len(expected) == BURST and set(counts) == expected and set(counts.values()) == {1}
    print(f"{BURST} files written and stored in {took:.1f} s")


def test_a_file_written_slowly_is_submitted_once_whole(dirmon: Callable[..., Monitor], tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    m = dirmon(str(watched), "--settle", "0.3")
    pieces = [os.urandom(1000) for _ in range(5)]
    with open(watched / "slow.bin", "wb") as handle:
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            time.sleep(0.8)  # longer than --settle: only the close says it is complete
    whole = sha(b"".join(pieces))
    wait_for(lambda: whole in stored(m.db), "the whole file's document")
    time.sleep(1)  # anything else it would submit would be stored by now
    assert m.stop() == 0
    assert stored(m.db) == {whole: 1}


def test_replaced_file_is_submitted_again_and_meta_kept(dirmon: Callable[..., Monitor], tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    m = dirmon(str(watched), "--meta", "tlp=AMBER", "--meta", "case=42", "--exclude", "*.tmp", "--min-size", "2")
    (watched / "x.txt").write_bytes(b"first\n")
    wait_for(lambda: sha(b"first\n") in stored(m.db), "the first content")
    (watched / "x.txt").write_bytes(b"second\n")
    (watched / "x.txt").touch()  # same content again: not submitted again
    (watched / "skip.tmp").write_bytes(b"excluded\n")
    (watched / "tiny.txt").write_bytes(b"1")
    wait_for(lambda: sha(b"second\n") in stored(m.db), "the second content")
    wait_for(lambda: b"2 filtered out" in m.log.read_bytes(), "the filtered files counted")
    assert m.stop() == 0
    assert stored(m.db) == {sha(b"first\n"): 1, sha(b"second\n"): 1}
    assert sources(m.db) == [{"path": str(watched / "x.txt"), "meta": {"tlp": "amber", "case": "42"}}] * 2


def test_kill_9_mid_burst_then_restart_gives_every_file_once(dirmon: Callable[..., Monitor], tmp_path: Path) -> None:
    watched = tmp_path / "in"
    watched.mkdir()
    m = dirmon(str(watched), "--jobs", "2", "--batch", "64")
    expected = set(write_files(watched, 1500, "k").values())
    wait_for(lambda: len(stored(m.db)) >= 200, "some documents")
    os.killpg(m.proc.pid, signal.SIGKILL)  # the monitor and its scanning processes, mid-burst
    m.proc.wait()
    before = stored(m.db)
    assert 200 <= len(before) < 1500 and set(before.values()) == {1}
    expected |= set(write_files(watched / "later", 100, "l").values())  # while it is down
    m2 = dirmon(str(watched), "--jobs", "2", "--batch", "64")
    wait_for(lambda: len(stored(m2.db)) >= 1600, "every document")
    time.sleep(1)
    assert m2.stop() == 0
    counts = stored(m2.db)
    assert set(counts) == expected and set(counts.values()) == {1}


def test_polling_mode_and_files_present_at_start(dirmon: Callable[..., Monitor], tmp_path: Path) -> None:
    watched = tmp_path / "in"
    expected = set(write_files(watched, 20, "p").values())  # before it starts
    m = dirmon(str(watched), "--polling", "--poll-interval", "0.3", "--settle", "0.6")
    expected |= set(write_files(watched / "sub", 30, "q").values())
    wait_for(lambda: len(stored(m.db)) >= 50, "50 documents")
    time.sleep(1)
    assert m.stop() == 0
    counts = stored(m.db)
    assert set(counts) == expected and set(counts.values()) == {1}
    assert "polling" in m.log.read_text()


@pytest.mark.parametrize("how", ["--move-to", "--delete"])
def test_files_are_moved_or_deleted_once_stored(dirmon: Callable[..., Monitor], tmp_path: Path, how: str) -> None:
    watched, done = tmp_path / "in", tmp_path / "done"
    (watched / "deep").mkdir(parents=True)
    m = dirmon(str(watched), *([how, str(done)] if how == "--move-to" else [how]))
    (watched / "a.txt").write_bytes(b"aaa\n")
    (watched / "deep" / "b.txt").write_bytes(b"bbb\n")
    wait_for(lambda: len(stored(m.db)) == 2, "2 documents")
    wait_for(lambda: not (watched / "a.txt").exists() and not (watched / "deep" / "b.txt").exists(), "the files to go")
    assert m.stop() == 0
    assert stored(m.db) == {sha(b"aaa\n"): 1, sha(b"bbb\n"): 1}
    if how == "--move-to":
        assert (done / "a.txt").read_bytes() == b"aaa\n" and (done / "deep" / "b.txt").read_bytes() == b"bbb\n"
    else:
        assert not done.exists()


def test_bad_meta_and_bad_move_to_are_usage_errors(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]],
                                                    tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    got = run_stoq("dirmon", "in", "--meta", "tlp=purple")
    assert got.returncode == 2 and b"meta tlp='purple'" in got.stderr
    got = run_stoq("dirmon", "in", "--move-to", "in/done")
    assert got.returncode == 2 and b"inside a watched directory" in got.stderr
