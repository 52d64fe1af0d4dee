"""``-o PLUGIN.OPTION=VALUE`` through the real command: a plugin name that is not installed is refused
(exit 2, with the closest name), an installed plugin the command will not run is said once, and a
relative path is the file where the user typed it (``scan``, ``stoq.toml``, and ``submit`` through a
real worker running in another directory: the cluster test needs Redis and PostgreSQL, run it under
the lock)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import validate
from stoq.config import load_settings
from stoq.registry import Registry, path_options

BIN_DIR = Path(sys.executable).parent
Run = Callable[..., subprocess.CompletedProcess[bytes]]

RULE = 'rule typed_here { strings: $a = "needle in the file" condition: $a }\n'


def matched(doc: dict) -> list[str]:
    return [m["rule"] for m in doc["results"][0]["workers"]["yara"]["matches"]]


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_bytes(b"a needle in the file\n")
    return path


def test_an_option_for_a_plugin_not_installed_is_refused(run_stoq: Run, sample: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", "-o", "yaar.rules=x.yar", "-o", "yaar.timeout=3")
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.decode().splitlines() == [
        "stoq: -o yaar.rules, -o yaar.timeout: no plugin 'yaar' is installed (did you mean 'yara'?) (see `stoq list`)"]
    proc = run_stoq("scan", str(sample), "--no-store", "-o", "zzzz.x=1")
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == ["stoq: -o zzzz.x: no plugin 'zzzz' is installed (see `stoq list`)"]


def test_an_option_for_a_plugin_not_selected_is_a_warning_said_once(run_stoq: Run, sample: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", "-o", "yara.timeout=3", "-o", "yara.max_strings=1",
                    "-o", "jsonl.path=out.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().splitlines() == [
        "stoq: warning: -o yara.timeout, -o yara.max_strings: plugin 'yara' is not selected (--workers yara); "
        "the option has no effect",
        "stoq: warning: -o jsonl.path: connector 'jsonl' is not selected (--connectors jsonl); the option has no effect"]
    # selected, or run through MIME routing and dispatch (an extractor): no warning
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.timeout=3",
                    "-o", "decompress.max_members=5")
    assert (proc.returncode, proc.stderr) == (0, b"")


def test_path_options_are_typed_as_paths() -> None:
    registry = Registry.discover()
    found = {name: sorted(path_options(e.cls)) for name, e in registry.entries.items()
             if e.cls is not None and path_options(e.cls)}
    assert {k: v for k, v in found.items() if k in ("yara", "gpg", "jsonl")} == {
        "yara": ["rules"], "gpg": ["keyring"], "jsonl": ["path"]}


def test_relative_paths_are_made_absolute_where_they_were_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "stoq.toml").write_text('[plugins.yara]\nrules = "rules/r.yar"\ntimeout = 5\n'
                                    '[plugins.gpg]\nkeyring = "/abs/keys.asc"\n')
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    paths = {"yara": {"rules"}, "gpg": {"keyring"}, "jsonl": {"path"}}
    settings = load_settings(conf / "stoq.toml", env={"STOQ_JSONL__PATH": "out/d.jsonl"},
                             plugin_options={"gpg": {"keyring": "k.asc"}}, path_options=lambda p: paths.get(p, set()))
    assert settings.plugins == {"yara": {"rules": str(conf / "rules" / "r.yar"), "timeout": 5},
                                "gpg": {"keyring": str(here / "k.asc")},
                                "jsonl": {"path": str(here / "out" / "d.jsonl")}}


def test_scan_reads_a_relative_rule_file_of_stoq_toml_next_to_it(run_stoq: Run, sample: Path, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "rules").mkdir(parents=True)
    (conf / "rules" / "r.yar").write_text(RULE)
    (conf / "stoq.toml").write_text('[plugins.yara]\nrules = "rules/r.yar"\n')
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-c", str(conf / "stoq.toml"))
    assert proc.returncode == 0, proc.stderr
    assert matched(json.loads(proc.stdout)) == ["typed_here"]
    # -o: relative to where the command runs (run_stoq runs it in tmp_path)
    (tmp_path / "mine.yar").write_text(RULE.replace("typed_here", "typed_on_the_command_line"))
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.rules=mine.yar")
    assert proc.returncode == 0, proc.stderr
    assert matched(json.loads(proc.stdout)) == ["typed_on_the_command_line"]


@pytest.fixture(scope="module")
def far_worker(tmp_path_factory: pytest.TempPathFactory, testplugins_site: Path) -> Iterator[object]:
    """A worker whose current directory is not the client's."""
    from test_cluster import cluster_env, fresh_database, start

    work = tmp_path_factory.mktemp("far-worker")
    fresh_database("stoq_cli_options")
    env = cluster_env(work, testplugins_site, (10, 11), "stoq_cli_options")
    upgraded = subprocess.run([str(BIN_DIR / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    worker = start(work, env, "-c", "1", "-l", "debug")  # debug: task arguments (file names) in the log
    try:
        yield worker
    finally:
        worker.stop()  # type: ignore[attr-defined]


def test_submit_sends_a_relative_rule_file_as_the_file_the_user_meant(far_worker: object, tmp_path: Path,
                                                                      sample: Path) -> None:
    client = tmp_path / "client"
    (client / "rules").mkdir(parents=True)
    (client / "rules" / "r.yar").write_text(RULE)
    env = far_worker.env  # type: ignore[attr-defined]
    proc = subprocess.run([str(BIN_DIR / "stoq"), "submit", str(sample), "-w", "yara", "-o", "yara.rules=rules/r.yar",
                           "--format", "json"], env=env, cwd=client, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (doc,) = json.loads(proc.stdout)
    validate(doc)
    assert matched(doc) == ["typed_here"]
