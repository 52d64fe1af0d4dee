"""The default worker set (stoQ v3's ``always_dispatch``, issue 14): what runs without ``--workers``, how
each layer replaces it, ``none``, the routing of workers that declare MIME types, and a scan of the corpus
with every bundled worker enabled that must end with no crash and only named errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from clamdtest import Clamd
from golden_docs import DISPATCH_MAP, every_worker, root_map
from helpers import CORPUS, corpus_files, validate
from stoq.config import DEFAULT_WORKERS, Settings, default_workers, load_settings
from stoq.dispatch import Dispatcher
from stoq.plugin import WorkerPlugin
from stoq.registry import Registry

Run = Callable[..., Any]
#: Error kinds documented in docs/results.md; ``crash`` must not happen on the corpus.
NAMED_KINDS = {"error", "timeout", "tool-missing"}


def test_the_default_set_is_the_built_in_default_and_every_layer_replaces_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOQDEV_DEFAULT_WORKERS")  # the tests' "none" (conftest.py)
    assert load_settings(None, env={}).workers == list(DEFAULT_WORKERS) == default_workers()
    toml = tmp_path / "stoq.toml"
    toml.write_text('[stoq]\nworkers = ["hash"]\n')
    assert load_settings(toml, env={}).workers == ["hash"]
    assert load_settings(toml, env={"STOQ_WORKERS": "filetype,hash"}).workers == ["filetype", "hash"]
    assert load_settings(toml, env={"STOQ_WORKERS": "hash"}, overrides={"workers": "yara"}).workers == ["yara"]
    toml.write_text('[stoq]\nworkers = []\n')
    assert load_settings(toml, env={}).workers == []
    for spelt in ("none", "NONE", " none "):
        assert load_settings(None, env={"STOQ_WORKERS": spelt}).workers == []
        assert load_settings(None, env={}, overrides={"workers": spelt}).workers == []


def test_every_default_worker_is_a_bundled_worker() -> None:
    registry = Registry.discover()
    assert all(registry.get(name).category == "worker" for name in DEFAULT_WORKERS)
    assert Settings.model_fields["workers"].default_factory is default_workers


class _Texty(WorkerPlugin):
    name = "texty"
    mimes = frozenset({"text/*", "message/rfc822"})


class _Always(WorkerPlugin):
    name = "always"


def test_a_worker_with_mimes_is_routed_only_when_selected() -> None:
    plugins: dict[str, Any] = {"texty": _Texty, "always": _Always}

    def planned(workers: list[str], mime: str) -> list[str]:
        return [p.name for p in Dispatcher(plugins, workers, None).plan(b"x", mime, True)[0]]

    assert planned(["texty", "always"], "text/plain") == ["always", "texty"]
    assert planned(["texty", "always"], "text/x-shellscript") == ["always", "texty"]  # text/* : any subtype
    assert planned(["texty", "always"], "message/rfc822") == ["always", "texty"]
    assert planned(["texty", "always"], "application/pdf") == ["always"]
    assert planned(["always"], "text/plain") == ["always"]  # not selected: its mimes route nothing
    assert planned([], "text/plain") == []


def roots(proc: Any) -> list[dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr.decode()
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    for doc in docs:
        validate(doc)
    return [doc["results"][0] for doc in docs]


@pytest.mark.tools("exiftool")
def test_stoq_scan_without_workers_runs_the_default_set(run_stoq: Run) -> None:
    default = {"STOQDEV_DEFAULT_WORKERS": ""}  # empty: the built-in default, as for a user
    files = (str(CORPUS / "test.exe"), str(CORPUS / "test.txt"))
    proc = run_stoq("scan", *files, "--no-store", "--format", "jsonl", "-o", "iocextract.max_size=10",
                    "-o", "hash.ssdeep_max_size=1", env=default)
    exe, txt = roots(proc)
    # test.exe: the default set less iocextract (routed to text), plus trailer (MIME routing of PEs)
    assert set(exe["workers"]) == {"yara", "peinfo", "exif", "entropy", "xorsearch", "trailer"}
    assert set(txt["workers"]) == {"yara", "entropy", "xorsearch", "iocextract"}
    assert txt["workers"]["iocextract"]["examined"] == 10
    assert proc.stderr.decode().splitlines() == [  # a worker outside the set is named; one in it is not
        "stoq: warning: -o hash.ssdeep_max_size: plugin 'hash' is not selected (--workers hash); the option has no effect"]
    exe, txt = roots(run_stoq("scan", *files, "--no-store", "--format", "jsonl", "--workers", "none", env=default))
    assert (set(exe["workers"]), set(txt["workers"])) == ({"trailer"}, set())
    exe, txt = roots(run_stoq("scan", *files, "--no-store", "--format", "jsonl", "-w", "yara,peinfo", env=default))
    assert (set(exe["workers"]), set(txt["workers"])) == ({"yara", "peinfo", "trailer"}, {"yara"})


@pytest.mark.tools("clamd", "exiftool")
def test_every_bundled_worker_on_the_corpus_gives_no_crash_and_only_named_errors(run_stoq: Run, tmp_path: Path) -> None:
    """``stoq scan ../shared/corpus --recursive`` with every bundled worker enabled (issue 14's "Done when"),
    clamav against a clamd of the test's own (tests/clamdtest.py)."""
    workers = every_worker()
    (tmp_path / "clamd").mkdir()
    clamd = Clamd(tmp_path / "clamd")
    clamd.start()
    try:
        proc = run_stoq("scan", str(CORPUS), "--recursive", "--no-store", "--jobs", "2", "--format", "jsonl",
                        "--workers", ",".join(workers), "-o", f"clamav.socket={clamd.socket}")
    finally:
        clamd.stop()
    assert proc.returncode in (0, 1), proc.stderr.decode()  # 1: a document has errors
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(Path(d["source"]["path"]).name for d in docs) == sorted(p.name for p in CORPUS.iterdir())
    ran: set[str] = set()
    for doc in docs:
        validate(doc)
        assert [e for e in doc["errors"] if e["kind"] not in NAMED_KINDS] == [], doc["source"]["path"]
        assert not any(f.startswith("crash:") for r in doc["results"] for f in r["flags"])
        ran.update(name for r in doc["results"] for name in r["workers"])
    assert set(workers) <= ran  # every worker did run (on some payload)
    # and on each root the plugins the dispatch map says (tests/data/dispatch_map.json, every_worker)
    kept = json.loads(DISPATCH_MAP.read_text())["every_worker"]
    by_name = {Path(d["source"]["path"]).name: d for d in docs}
    assert kept["workers"] == workers and sorted(kept["roots"]) == [p.name for p in corpus_files()]
    assert root_map({name: by_name[name] for name in kept["roots"]}) == kept["roots"], (
        "scripts/golden --regen, and review the diff of tests/data/dispatch_map.json")
