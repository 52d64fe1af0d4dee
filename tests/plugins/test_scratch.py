"""Scratch directories of the external tools: removed when a killed worker left them behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stoq_plugins import _scratch

MAKE_AND_HANG = """
import os, sys, time
from stoq_plugins import _scratch
path = _scratch.make(sys.argv[1])
os.makedirs(os.path.join(path, "out", "ro"))
open(os.path.join(path, "input"), "wb").write(b"a hostile payload")
os.chmod(os.path.join(path, "out", "ro"), 0o500)  # a read-only directory, as tools make
print(path, flush=True)
time.sleep(600)
"""


@pytest.fixture()
def tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


def killed_worker(kind: str, tmp_path: Path) -> str:
    """A real process that makes a scratch directory and is killed (SIGKILL) while using it."""
    proc = subprocess.Popen([sys.executable, "-c", MAKE_AND_HANG, kind], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return path


def test_directories_of_dead_processes_are_removed(tmpdir_env: Path) -> None:
    dead = killed_worker("tool", tmpdir_env)
    assert Path(dead).parent == tmpdir_env and Path(dead).name.startswith("stoq-tool-")
    mine = _scratch.make("tool")  # this process is alive
    other_kind = killed_worker("gpg", tmpdir_env)
    unrelated = tmpdir_env / "stoq-tool-notapid-x"
    unrelated.mkdir()
    assert _scratch.remove_stale("tool") == [dead]
    assert not Path(dead).exists()
    assert Path(mine).is_dir() and Path(other_kind).is_dir() and unrelated.is_dir()
    assert _scratch.remove_stale("tool") == []


def test_decompress_setup_sweeps_the_tool_directories(tmpdir_env: Path) -> None:
    from stoq_plugins.decompress import DecompressPlugin

    dead = killed_worker("tool", tmpdir_env)
    DecompressPlugin().setup()
    assert not Path(dead).exists()


def test_a_killed_gpg_run_loses_its_directory_and_its_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from stoq_plugins._gpg import remove_stale_homes

    short = tempfile.mkdtemp(prefix="sq", dir="/tmp")  # gpg-agent's socket path must stay short
    monkeypatch.setenv("TMPDIR", short)
    monkeypatch.setattr(tempfile, "tempdir", None)
    dead = killed_worker("gpg", Path(short))
    home = os.path.join(dead, "h")
    os.mkdir(home, 0o700)
    env = dict(os.environ, GNUPGHOME=home, HOME=dead)
    subprocess.run(["gpgconf", "--homedir", home, "--launch", "gpg-agent"], env=env, check=True, timeout=30,
                   capture_output=True)
    agents = subprocess.run(["pgrep", "-f", f"gpg-agent.*{home}"], capture_output=True, text=True).stdout.split()
    assert len(agents) == 1  # gpg-agent --homedir HOME --use-standard-socket --daemon
    assert remove_stale_homes() == [dead]
    assert not Path(dead).exists()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{agents[0]}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{agents[0]}")
    os.rmdir(short)


def test_a_new_embedded_worker_sweeps_for_its_set_up_plugins(tmpdir_env: Path, tmp_path: Path) -> None:
    """A replacement worker is forked from a parent whose decompress is already set up: the engine's
    worker_started (called first thing in every embedded worker) sweeps again."""
    from stoq.config import load_settings
    from stoq.engine import Engine

    engine = Engine(load_settings(env={"STOQ_ARCHIVE": str(tmp_path / "archive"), "STOQ_ARCHIVER": "none"},
                                  overrides={"workers": "decompress"}))
    dead = killed_worker("tool", tmpdir_env)  # after setup: only a new worker's sweep removes it
    assert Path(dead).is_dir()
    engine.worker_started()
    assert not Path(dead).exists()
