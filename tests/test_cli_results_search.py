"""``stoq results`` searches (--since, --until, --limit, --filename, --mime, --flag, --plugin, --yara) on
a store filled by real scans of corpus files, on SQLite and on PostgreSQL (run under the lock). Every
expected list of scan ids is computed from the documents the scans printed, not from the store."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import CORPUS, ROOT, database, pg_admin, pg_url as worker_pg_url

Doc = dict[str, Any]
SAMPLES = ROOT / "samples"
MZ_RULE = "rule mz_header { condition: uint16(0) == 0x5A4D }\n"


class Filled:
    """A store and the documents the scans that filled it printed, in the order they were made."""

    def __init__(self, env: dict[str, str], work: Path, docs: list[Doc]) -> None:
        self.env, self.work, self.docs = env, work, docs

    def stoq(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(Path(sys.executable).parent / "stoq"), *args], env=self.env, cwd=self.work,
                              capture_output=True, timeout=300)

    def newest_first(self, keep: Callable[[Doc], bool]) -> list[str]:
        chosen = [d for d in self.docs if keep(d)]
        return [d["scan_id"] for d in sorted(chosen, key=lambda d: (d["date"], d["scan_id"]), reverse=True)]


def pg_url(name: str) -> str:
    from sqlalchemy import text

    with pg_admin().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database(name)}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{database(name)}"'))
    return worker_pg_url(name)


def fill(work: Path, database_url: str) -> Filled:
    """Three runs of `stoq scan`: corpus files and the sample zip with YARA; a tar cut at depth 0 (the
    flag limit:depth); an empty file, a copy of a zip member, and the sample zip again with basicworker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") or k == "STOQ_TOOL_PATH"}
    env |= {"HOME": str(work), "XDG_DATA_HOME": str(work / "data"), "XDG_CONFIG_HOME": str(work / "config"),
            "STOQ_ARCHIVE": str(work / "archive"), "STOQ_DATABASE_URL": database_url}
    filled = Filled(env, work, [])
    if database_url.startswith("postgresql"):
        assert filled.stoq("db", "upgrade").returncode == 0
    rules = work / "rules.yar"
    rules.write_text((SAMPLES / "demo.yar").read_text() + MZ_RULE)
    with zipfile.ZipFile(SAMPLES / "invoice.zip") as z:
        (work / "readme-copy.txt").write_bytes(z.read("readme.txt"))
    runs = [
        [str(CORPUS / "test.zip"), str(SAMPLES / "invoice.zip"), str(CORPUS / "test.exe"), str(CORPUS / "test.gz"),
         "--workers", "yara,peinfo,entropy", "-o", f"yara.rules={rules}"],
        [str(CORPUS / "test.tar"), "--max-depth", "0"],
        [str(CORPUS / "test.empty"), str(work / "readme-copy.txt"), str(SAMPLES / "invoice.zip"), "--workers", "basicworker"],
    ]
    for args in runs:
        proc = filled.stoq("scan", *args, "--jobs", "1")
        assert proc.returncode == 0, proc.stderr
        filled.docs += [json.loads(line) for line in proc.stdout.splitlines()]
    return filled


#: One filled store per database for the session: test_queries.py reads the same scans.
_FILLED: dict[str, Filled] = {}


def filled_store(dialect: str, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    if dialect not in _FILLED:
        work = tmp_path_factory.mktemp("search")
        url = f"sqlite:///{work / 'stoq.db'}" if dialect == "sqlite" else pg_url("stoq_results_search")
        _FILLED[dialect] = fill(work, url)
    return _FILLED[dialect]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return filled_store(request.param, tmp_path_factory)


def payloads(doc: Doc) -> list[Doc]:
    return list(doc["results"])


def yara_rules(p: Doc) -> set[str]:
    return {m["rule"] for m in p["workers"].get("yara", {}).get("matches", [])}


def scalar_at(p: Doc, plugin: str, path: tuple[str, ...]) -> tuple[bool, Any]:
    """Whether the payload's output of ``plugin`` has a scalar at ``path``, and that scalar."""
    value: Any = p["workers"].get(plugin)
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return False, None
        value = value[key]
    return not isinstance(value, (dict, list)), value


def same_scalar(a: Any, b: Any) -> bool:
    """JSON equality of scalars: true is not 1, 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def where(plugin: str, path: tuple[str, ...], value: Any) -> Callable[[Doc], bool]:
    def keep(d: Doc) -> bool:
        for p in payloads(d):
            found, got = scalar_at(p, plugin, path)
            if found and same_scalar(got, value):
                return True
        return False
    return keep


def ids(filled: Filled, *args: str) -> list[str]:
    proc = filled.stoq("results", *args, "--ids", "--limit", "100")
    assert proc.returncode in (0, 6), proc.stderr
    return proc.stdout.decode().split()


def test_each_filter_finds_exactly_the_scans_whose_documents_match(store: Filled) -> None:
    cases: list[tuple[list[str], Callable[[Doc], bool]]] = [
        (["--yara", "demo_invoice_lure"], lambda d: any("demo_invoice_lure" in yara_rules(p) for p in payloads(d))),
        (["--yara", "mz_header"], lambda d: any("mz_header" in yara_rules(p) for p in payloads(d))),
        (["--mime", "application/zip"], lambda d: any(p["mime"] == "application/zip" for p in payloads(d))),
        (["--mime", "application/*"], lambda d: any(p["mime"].startswith("application/") for p in payloads(d))),
        (["--filename", "*.TXT"], lambda d: any(fnmatch.fnmatch((p["filename"] or "").lower(), "*.txt") for p in payloads(d))),
        (["--filename", "lorem?txt"], lambda d: any(fnmatch.fnmatch((p["filename"] or "").lower(), "lorem?txt") for p in payloads(d))),
        (["--flag", "limit:depth"], lambda d: any("limit:depth" in p["flags"] for p in payloads(d))),
        (["--flag", "basicworker:empty"], lambda d: any("basicworker:empty" in p["flags"] for p in payloads(d))),
        (["--plugin", "basicworker"], lambda d: any("basicworker" in p["workers"] for p in payloads(d))),
        (["--plugin", "decompress"], lambda d: any("decompress" in p["workers"] for p in payloads(d))),
        # payload conditions hold for one payload: a text file that yara ran on
        (["--plugin", "yara", "--mime", "text/plain"],
         lambda d: any("yara" in p["workers"] and p["mime"] == "text/plain" for p in payloads(d))),
    ]
    cases += [
        (["--where", "peinfo.is_exe=true"], where("peinfo", ("is_exe",), True)),
        (["--where", "peinfo.machine=IMAGE_FILE_MACHINE_AMD64"], where("peinfo", ("machine",), "IMAGE_FILE_MACHINE_AMD64")),
        (["--where", "peinfo.overlay=null"], where("peinfo", ("overlay",), None)),
        (["--where", "entropy.blocks_total=1"], where("entropy", ("blocks_total",), 1)),
        (["--where", "entropy.blocks_total=1.0"], where("entropy", ("blocks_total",), 1)),
        (["--where", "entropy.blocks_total=1", "--mime", "text/plain"],
         lambda d: any(p["mime"] == "text/plain" and same_scalar(scalar_at(p, "entropy", ("blocks_total",))[1], 1)
                       for p in payloads(d))),
        (["--where", "entropy.highest.offset=0"], where("entropy", ("highest", "offset"), 0)),
    ]
    for args, keep in cases:
        expected = store.newest_first(keep)
        assert expected, args  # the corpus scans hold an answer to every question
        assert ids(store, *args) == expected, args
    # true is no number, a number no text: nothing has is_exe equal to 1 or "true", or a machine "1"
    for args in (["--where", "peinfo.is_exe=1"], ["--where", 'peinfo.is_exe="true"'], ["--where", "peinfo.machine=1"]):
        assert ids(store, *args) == [], args
    # a zip on which demo_encoded_powershell matched: none (it matched a member, not the zip)
    proc = store.stoq("results", "--mime", "application/zip", "--yara", "demo_encoded_powershell")
    assert (proc.returncode, proc.stdout) == (6, b"")
    assert proc.stderr == b"stoq: no stored scan matches the search\n"
    assert store.newest_first(lambda d: any("demo_encoded_powershell" in yara_rules(p) for p in payloads(d)))


def test_since_until_and_limit(store: Filled) -> None:
    dates = sorted({d["date"] for d in store.docs})
    middle = dates[len(dates) // 2]
    moment = datetime.fromisoformat(middle.replace("Z", "+00:00"))
    assert ids(store, "--since", middle) == store.newest_first(lambda d: datetime.fromisoformat(d["date"].replace("Z", "+00:00")) >= moment)
    assert ids(store, "--until", middle) == store.newest_first(lambda d: datetime.fromisoformat(d["date"].replace("Z", "+00:00")) < moment)
    assert ids(store, "--since", "1d", "--mime", "application/zip") == store.newest_first(
        lambda d: any(p["mime"] == "application/zip" for p in payloads(d)))
    assert ids(store, "--since", "2999-01-01") == []
    everything = store.newest_first(lambda d: True)
    proc = store.stoq("results", "--limit", "2", "--ids")
    assert proc.stdout.decode().split() == everything[:2]
    # documents, not only ids: the same scans, whole
    proc = store.stoq("results", "--yara", "demo_invoice_lure", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    by_id = {d["scan_id"]: d for d in store.docs}
    assert got == [by_id[i] for i in store.newest_first(lambda d: any("demo_invoice_lure" in yara_rules(p) for p in payloads(d)))]


def test_usage_errors(store: Filled) -> None:
    for args, message in (
            (["results"], "stoq: give a KEY (a scan id or a sha256), or search options (see stoq results --help)"),
            (["results", store.docs[0]["scan_id"], "--mime", "text/plain"],
             "stoq: give a KEY or search options (--since, --filename, --mime, --flag, --plugin, --yara, --where), not both"),
            (["results", "--where", "peinfo"],
             "stoq: --where: 'peinfo' is not PLUGIN.KEY=VALUE (keys: letters, digits, '_' and '-'; nested keys joined with '.')"),
            (["results", "--since", "yesterday"],
             "stoq: --since/--until: 'yesterday' is neither an ISO 8601 date or time nor a duration such as 7d, 12h or 30m")):
        proc = store.stoq(*args)
        assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (2, b"", message + "\n"), args
    # --limit with a KEY: the first scans of that sha256
    sha = store.docs[0]["results"][0]["sha256"]
    every = [d["scan_id"] for d in store.docs if any(p["sha256"] == sha for p in d["results"])]
    proc = store.stoq("results", sha, "--limit", "1", "--format", "jsonl")
    assert [json.loads(line)["scan_id"] for line in proc.stdout.splitlines()] == every[:1]
