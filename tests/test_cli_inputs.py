"""Inputs ``stoq scan`` cannot scan are named on stderr with their true reason, the exit code is 3 and
everything else is scanned: unreadable files and directories, FIFOs, symbolic link loops, dangling
links, a path under a file, subdirectories without ``--recursive``.

Run as root, a file's mode does not stop reading it (CAP_DAC_OVERRIDE): the tests that need an
unreadable file then run stoq without that capability (``setpriv``, util-linux), which is what a
normal user is."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from stoq.archive import read_input

STOQ = Path(sys.executable).parent / "stoq"
DROP = "-dac_override,-dac_read_search"


def unprivileged() -> list[str]:
    """A command prefix under which file modes are obeyed (empty when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:  # pragma: no cover - util-linux is essential on Debian
        pytest.skip("running as root without setpriv (util-linux): modes cannot be made to count")
    return [setpriv, f"--inh-caps={DROP}", f"--bounding-set={DROP}"]


def scan(tmp_path: Path, env: dict[str, str], *args: str, prefix: list[str] | None = None) -> tuple[int, list[str], list[str]]:
    """Runs ``stoq scan ARGS --no-store`` in ``tmp_path``; returns the exit code, the scanned paths
    (``source.path`` of each document, in order) and the stderr lines. A run that blocks fails."""
    proc = subprocess.run([*(prefix or []), str(STOQ), "scan", *args, "--no-store"], cwd=tmp_path, env=env,
                          capture_output=True, timeout=120)
    docs: list[dict[str, Any]] = [json.loads(line) for line in proc.stdout.splitlines()]
    return proc.returncode, [d["source"]["path"] for d in docs], proc.stderr.decode().splitlines()


def test_an_unreadable_file_is_reported_and_the_others_are_scanned(tmp_path: Path, stoq_env: dict[str, str]) -> None:
    (tmp_path / "secret.bin").write_bytes(b"cannot be read\n")
    (tmp_path / "secret.bin").chmod(0)
    (tmp_path / "ok.txt").write_bytes(b"readable\n")
    code, scanned, err = scan(tmp_path, stoq_env, "secret.bin", "ok.txt", prefix=unprivileged())
    assert code == 3, err
    assert scanned == [str(tmp_path / "ok.txt")]
    assert err == [f"stoq: {tmp_path / 'secret.bin'}: Permission denied"]


def test_special_arguments_get_their_true_reason(tmp_path: Path, stoq_env: dict[str, str]) -> None:
    os.mkfifo(tmp_path / "fifo")  # no writer: opening it would block
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    os.symlink(tmp_path / "nothing-here", tmp_path / "dangling")
    (tmp_path / "ok.txt").write_bytes(b"readable\n")
    code, scanned, err = scan(tmp_path, stoq_env, "fifo", "loop-a", "dangling", "ok.txt/inside", "missing", "ok.txt")
    assert code == 3, err
    assert scanned == [str(tmp_path / "ok.txt")]
    assert err == [
        "stoq: fifo: not a regular file or directory (a FIFO): not scanned",
        "stoq: loop-a: too many levels of symbolic links (a loop?)",
        "stoq: dangling: no such file or directory (a symbolic link whose target is missing)",
        "stoq: ok.txt/inside: not a directory",
        "stoq: missing: no such file or directory",
    ]


def test_a_recursive_walk_names_what_it_cannot_scan(tmp_path: Path, stoq_env: dict[str, str]) -> None:
    top = tmp_path / "in"
    (top / "a" / "locked").mkdir(parents=True)
    (top / "b").mkdir()
    (top / "1.txt").write_bytes(b"one\n")
    (top / "a" / "2.txt").write_bytes(b"two\n")
    (top / "a" / "locked" / "hidden.txt").write_bytes(b"never listed\n")
    (top / "b" / "3.txt").write_bytes(b"three\n")
    os.mkfifo(top / "a" / "pipe")
    os.symlink(top / "1.txt", top / "b" / "link.txt")  # not followed, as documented: not a problem
    (top / "a" / "locked").chmod(0)
    try:
        code, scanned, err = scan(tmp_path, stoq_env, "in", "--recursive", prefix=unprivileged())
    finally:
        (top / "a" / "locked").chmod(0o755)
    assert code == 3, err
    assert scanned == [str(top / "1.txt"), str(top / "a" / "2.txt"), str(top / "b" / "3.txt")]
    assert err == [  # in the order of the walk: a's entries, then a's subdirectories
        f"stoq: {top / 'a' / 'pipe'}: not a regular file or directory (a FIFO): not scanned",
        f"stoq: {top / 'a' / 'locked'}: permission denied: not scanned",
    ]


def test_a_directory_without_recursive_names_the_subdirectories_it_skips(tmp_path: Path,
                                                                         stoq_env: dict[str, str]) -> None:
    top = tmp_path / "in"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "other").mkdir()
    (top / "top.txt").write_bytes(b"at the top\n")
    (top / "sub" / "below.txt").write_bytes(b"below\n")
    code, scanned, err = scan(tmp_path, stoq_env, "in")
    assert code == 3, err
    assert scanned == [str(top / "top.txt")]
    assert err == [f"stoq: {top}: 2 subdirectories not scanned (without --recursive)"]
    only_dirs = tmp_path / "only"
    (only_dirs / "x").mkdir(parents=True)
    code, scanned, err = scan(tmp_path, stoq_env, "only")
    assert (code, scanned) == (3, [])
    assert err == [f"stoq: {only_dirs}: 1 subdirectory not scanned (without --recursive)"]


def test_reading_a_fifo_put_where_a_file_was_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes | None] = []

    def read() -> None:
        try:
            outcome.append(read_input(fifo, 1 << 20))
        except OSError as exc:
            outcome.append(exc)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(60)
    if reader.is_alive():  # unblock the thread before failing: open a writer
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_input blocked on a FIFO")
    (error,) = outcome
    assert isinstance(error, OSError) and error.strerror == "not a regular file"
