"""The ``stoq`` command, end to end: real subprocesses of the installed entry point (``run_stoq``),
a private SQLite store and archive per test, expected values computed independently (hashlib,
zipfile, gzip, json)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import uuid
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers import CORPUS, PG_URL, ROOT, corpus_files, make_zip, pg_admin, validate

Run = Callable[..., subprocess.CompletedProcess[bytes]]


# ------------------------------------------------------------------------------------------ helpers

def sha256_file(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def walk_files(top: Path) -> list[Path]:
    """The regular files under ``top`` as ``scan --recursive`` promises to visit them: sorted walk,
    symlinks not followed."""
    found: list[Path] = []
    for dirpath, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full):
                found.append(Path(full))
    return found


def jsonl(stdout: bytes) -> list[dict[str, Any]]:
    """Parses stdout as JSON lines, failing on any line that is not exactly one JSON object."""
    text = stdout.decode()
    assert text == "" or text.endswith("\n"), f"stdout does not end with a newline: {text[-200:]!r}"
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            pytest.fail(f"stdout line {number} is not JSON ({exc}): {line[:200]!r}")
        assert isinstance(value, dict), f"stdout line {number} is not a JSON object"
        docs.append(value)
    return docs


def real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)


def with_pythonpath(site: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment overrides putting ``site`` (the test plugins) first on a subprocess's sys.path."""
    out = dict(env or {})
    rest = os.environ.get("PYTHONPATH")
    out["PYTHONPATH"] = str(site) + (os.pathsep + rest if rest else "")
    return out


def nested_zip(path: Path) -> Path:
    """outer.zip -> {a.txt, dir/b.txt, inner.zip -> {c.txt, deeper.zip -> {d.txt}}}: four levels,
    every content distinct (no duplicates to muddle the counts)."""
    deeper = make_zip({"d.txt": b"delta, the deepest member\n"})
    inner = make_zip({"c.txt": b"charlie, one level down\n", "deeper.zip": deeper})
    outer = make_zip({"a.txt": b"alpha at the top\n", "dir/b.txt": b"bravo in a folder\n", "inner.zip": inner})
    path.write_bytes(outer)
    return path


def zip_payloads(data: bytes, name: str, max_depth: int, depth: int = 0,
                 chain: tuple[str, ...] = ()) -> list[tuple[int, tuple[str, ...], str]]:
    """Every payload a scan down to ``max_depth`` should hold, from python's zipfile alone:
    (depth, names from the root, sha256)."""
    chain = chain + (name,)
    out = [(depth, chain, hashlib.sha256(data).hexdigest())]
    if depth < max_depth and zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    out.extend(zip_payloads(zf.read(info), info.filename, max_depth, depth + 1, chain))
    return out


def root(doc: dict[str, Any]) -> dict[str, Any]:
    first = doc["results"][0]
    assert first["depth"] == 0 and first["parent_id"] is None
    return first


# ----------------------------------------------------------------------------- 1, 2: scan and formats

@pytest.fixture(scope="module")
def corpus_listing() -> list[Path]:
    files = walk_files(CORPUS)
    names = {p.name for p in files}
    # The corpus' own description files are files like any other and are scanned too.
    assert {"README.md", "expected_children.json"} <= names
    assert len(files) == len(corpus_files()) + 2
    return files


def test_scan_corpus_jsonl_one_valid_document_per_file(run_stoq: Run, corpus_listing: list[Path]) -> None:
    proc = run_stoq("scan", str(CORPUS), "--recursive", "--format", "jsonl")
    docs = jsonl(proc.stdout)  # stdout holds JSON lines and nothing else

    assert len(docs) == len(corpus_listing)
    # Documents come in input order (the sorted walk), one per file.
    assert [real(d["source"]["path"]) for d in docs] == [real(p) for p in corpus_listing]
    for doc in docs:
        validate(doc)
        assert root(doc)["sha256"] == sha256_file(doc["source"]["path"]), doc["source"]["path"]
        assert root(doc)["size"] == os.path.getsize(doc["source"]["path"])
        assert root(doc)["filename"] == Path(doc["source"]["path"]).name
    assert len({d["scan_id"] for d in docs}) == len(docs)

    any_errors = any(d["errors"] for d in docs)
    assert proc.returncode == (1 if any_errors else 0), proc.stderr.decode()


def test_scan_corpus_json_array_holds_the_same_documents(run_stoq: Run, corpus_listing: list[Path]) -> None:
    proc = run_stoq("scan", str(CORPUS), "--recursive", "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr.decode()
    docs = json.loads(proc.stdout)  # one JSON value: the whole of stdout
    assert isinstance(docs, list)
    assert len(docs) == len(corpus_listing)
    for doc in docs:
        validate(doc)
    got = Counter(root(d)["sha256"] for d in docs)
    assert got == Counter(sha256_file(p) for p in corpus_listing)
    assert proc.returncode == (1 if any(d["errors"] for d in docs) else 0)


def test_scan_json_with_no_document_is_an_empty_array(run_stoq: Run, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    proc = run_stoq("scan", str(empty), "--recursive", "--format", "json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == []


def test_scan_template_renders_each_document(run_stoq: Run, tmp_path: Path) -> None:
    template = tmp_path / "root.j2"
    template.write_text("{{ doc.results[0].sha256 }} {{ doc.payloads }}\n")
    files = [CORPUS / "test.txt", CORPUS / "test.gz", CORPUS / "test.zip"]
    proc = run_stoq("scan", *map(str, files), "--template", str(template))
    assert proc.returncode == 0, proc.stderr.decode()

    with zipfile.ZipFile(CORPUS / "test.zip") as zf:
        zip_members = sum(1 for i in zf.infolist() if not i.is_dir())
    expected = [f"{sha256_file(CORPUS / 'test.txt')} 1",
                f"{sha256_file(CORPUS / 'test.gz')} 2",  # the .gz and its decompressed content
                f"{sha256_file(CORPUS / 'test.zip')} {1 + zip_members}"]
    assert proc.stdout.decode() == "".join(line + "\n" for line in expected)


def test_scan_table_prints_the_payload_tree(run_stoq: Run, tmp_path: Path) -> None:
    sample = nested_zip(tmp_path / "outer.zip")
    proc = run_stoq("scan", str(sample), "--format", "table")
    assert proc.returncode == 0, proc.stderr.decode()
    expected = zip_payloads(sample.read_bytes(), "outer.zip", max_depth=99)

    lines = proc.stdout.decode().splitlines()
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    assert header.startswith("scan ")
    assert f"{len(expected)} payload(s)" in header and str(sample) in header
    assert len(body) == len(expected)

    # Rebuild the tree from the indentation and compare it, with each node's sha256 prefix.
    stack: list[str] = []
    seen = []
    for line in body:
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0 and indent >= 2, line
        depth = indent // 2 - 1
        fields = line.strip().split("  ")
        name = fields[0]
        sha_field = next(f for f in fields if f.startswith("sha256:"))
        assert depth <= len(stack), f"{line!r} is indented deeper than a child of the line above"
        stack = stack[:depth] + [name]
        seen.append((depth, tuple(stack), sha_field.removeprefix("sha256:")))
    assert sorted(seen) == sorted((d, chain, sha[:16]) for d, chain, sha in expected)


# --------------------------------------------------------------------------------------- 3: exit codes

def test_missing_input_exits_3_and_scans_the_rest(run_stoq: Run, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file.bin"
    present = [CORPUS / "test.txt", CORPUS / "test.gz"]
    proc = run_stoq("scan", str(present[0]), str(missing), str(present[1]))
    assert proc.returncode == 3
    assert str(missing) in proc.stderr.decode()
    docs = jsonl(proc.stdout)
    assert [real(d["source"]["path"]) for d in docs] == [real(p) for p in present]
    assert [root(d)["sha256"] for d in docs] == [sha256_file(p) for p in present]
    for doc in docs:
        validate(doc)


def test_unknown_worker_exits_4_naming_it(run_stoq: Run) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--workers", "yara,nosuchplugin42")
    assert proc.returncode == 4
    assert "nosuchplugin42" in proc.stderr.decode()
    assert proc.stdout == b""


@pytest.mark.parametrize("option", ["bad", "yara.nosuchoption=1"])
def test_bad_plugin_option_exits_4(run_stoq: Run, option: str) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "-w", "yara", "-o", option)
    assert proc.returncode == 4, proc.stderr.decode()
    assert proc.stderr.decode().startswith("stoq: ")
    assert proc.stdout == b""


def test_usage_error_exits_2(run_stoq: Run) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--format", "xml")
    assert proc.returncode == 2
    assert proc.stdout == b""


def test_plugin_raising_exits_1_with_the_error_in_the_document(run_stoq: Run, testplugins_site: Path) -> None:
    sample = CORPUS / "test.txt"
    proc = run_stoq("scan", str(sample), "--workers", "boom", env=with_pythonpath(testplugins_site))
    assert proc.returncode == 1, proc.stderr.decode()
    [doc] = jsonl(proc.stdout)
    validate(doc)
    assert root(doc)["sha256"] == sha256_file(sample)
    assert [(e["payload_id"], e["plugin"], e["kind"]) for e in doc["errors"]] == \
        [(root(doc)["payload_id"], "boom", "error")]
    assert "boom on purpose" in doc["errors"][0]["message"]

    # The same plugin that does not raise: exit 0, its result in the document.
    proc = run_stoq("scan", str(sample), "--workers", "boom", "-o", "boom.trigger=NOT-IN-THE-FILE-9f3a",
                    env=with_pythonpath(testplugins_site))
    assert b"NOT-IN-THE-FILE-9f3a" not in sample.read_bytes()
    assert proc.returncode == 0, proc.stderr.decode()
    [doc] = jsonl(proc.stdout)
    assert doc["errors"] == [] and root(doc)["workers"] == {"boom": {"ok": True}}


def test_results_unknown_id_exits_6(run_stoq: Run) -> None:
    unknown = str(uuid.uuid4())
    proc = run_stoq("results", unknown)
    assert proc.returncode == 6
    assert unknown in proc.stderr.decode()
    assert proc.stdout == b""
    proc = run_stoq("results", hashlib.sha256(b"never scanned " + unknown.encode()).hexdigest())
    assert proc.returncode == 6


# ------------------------------------------------------------------------------------------ 4: the store

def test_results_reads_back_the_scanned_document(run_stoq: Run, testplugins_site: Path) -> None:
    # A zip with children, plugin results and a plugin error: every part of the document round-trips.
    sample = CORPUS / "test.zip"
    proc = run_stoq("scan", str(sample), "--workers", "yara,boom", "-o", "boom.trigger=Lorem",
                    env=with_pythonpath(testplugins_site))
    assert proc.returncode == 1, proc.stderr.decode()
    [scanned] = jsonl(proc.stdout)
    validate(scanned)
    assert scanned["payloads"] > 1 and scanned["errors"]

    proc = run_stoq("results", scanned["scan_id"], "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout) == [scanned]

    proc = run_stoq("results", scanned["scan_id"])  # default format: a JSON array
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout) == [scanned]


def test_results_by_sha256_lists_every_scan_of_that_content(run_stoq: Run) -> None:
    sample = CORPUS / "test.zip"
    scans = []
    for _ in range(2):
        proc = run_stoq("scan", str(sample))
        assert proc.returncode == 0, proc.stderr.decode()
        [doc] = jsonl(proc.stdout)
        scans.append(doc)
    assert scans[0]["scan_id"] != scans[1]["scan_id"]

    proc = run_stoq("results", sha256_file(sample), "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout) == scans  # both, oldest first, as scanned

    # A member's sha256 finds the scans that extracted it (once per scan, however often it occurs).
    with zipfile.ZipFile(sample) as zf:
        member = hashlib.sha256(zf.read(next(i for i in zf.infolist() if not i.is_dir()))).hexdigest()
    proc = run_stoq("results", member, "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    assert [d["scan_id"] for d in jsonl(proc.stdout)] == [d["scan_id"] for d in scans]


def test_scanning_into_sqlite_never_imports_sqlalchemy(run_stoq: Run) -> None:
    """A new SQLite store is created, and every later scan saved, with the standard sqlite3 module:
    `stoq scan` does not wait ~0.4 s for SQLAlchemy (nor ~0.6 s for Alembic). `results` reads it back."""
    for _ in range(2):  # the first scan creates the store, the second finds it at the current schema
        proc = run_stoq("scan", str(CORPUS / "test.txt"), env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        imported = proc.stderr.decode()
        assert "stoq.engine" in imported and "stoq.sqlitedb" in imported  # the import log is there ...
        assert "sqlalchemy" not in imported and "alembic" not in imported  # ... and holds neither
        [doc] = jsonl(proc.stdout)
        got = run_stoq("results", doc["scan_id"], "--format", "jsonl")
        assert got.returncode == 0, got.stderr.decode()
        assert jsonl(got.stdout) == [doc]


def test_no_store_leaves_nothing_to_read_back(run_stoq: Run) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--no-store")
    assert proc.returncode == 0, proc.stderr.decode()
    [doc] = jsonl(proc.stdout)
    assert run_stoq("results", doc["scan_id"]).returncode == 6


# -------------------------------------------------------------------------------------- 5: PostgreSQL

@pytest.fixture()
def pg_schema_url() -> Iterator[tuple[str, Any]]:
    """A PostgreSQL URL whose search_path is a fresh schema of its own (dropped afterwards), and an
    autocommit engine on the database."""
    from sqlalchemy import text

    admin = pg_admin()
    schema = f"stoq_test_cli_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}", (admin, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _tables(admin: Any, schema: str) -> set[str]:
    from sqlalchemy import text

    with admin.connect() as conn:
        rows = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                            {"s": schema}).all()
    return {r[0] for r in rows}


@pytest.mark.postgres
def test_postgres_store_needs_db_upgrade_then_round_trips(run_stoq: Run, stoq_env: dict[str, str],
                                                          tmp_path: Path, pg_schema_url: tuple[str, Any]) -> None:
    from stoq.store import HEAD_REVISION

    url, (admin, schema) = pg_schema_url
    env = {"STOQ_DATABASE_URL": url}
    sample = CORPUS / "test.zip"

    proc = run_stoq("scan", str(sample), env=env)
    assert proc.returncode == 5, proc.stderr.decode()
    assert "stoq db upgrade" in proc.stderr.decode()
    assert proc.stdout == b""  # refused before scanning anything
    assert _tables(admin, schema) == set()  # and a server database is never migrated implicitly

    upgrade = subprocess.run([sys.executable, "manage.py", "db", "upgrade"], cwd=ROOT, capture_output=True,
                             env=dict(stoq_env, **env), timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr.decode()
    assert HEAD_REVISION in upgrade.stderr.decode()
    assert {"alembic_version", "scans", "payloads", "scan_payloads", "plugin_results",
            "scan_errors"} <= _tables(admin, schema)

    proc = run_stoq("scan", str(sample), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    [scanned] = jsonl(proc.stdout)
    validate(scanned)
    assert root(scanned)["sha256"] == sha256_file(sample)

    proc = run_stoq("results", scanned["scan_id"], "--format", "jsonl", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout) == [scanned]

    from sqlalchemy import text

    with admin.connect() as conn:  # it really is in that schema
        count = conn.execute(text(f'SELECT count(*) FROM "{schema}".scans WHERE scan_id = :k'),
                             {"k": scanned["scan_id"]}).scalar_one()
    assert count == 1
    # ... and not in the SQLite file the fixture's default environment points at.
    assert run_stoq("results", scanned["scan_id"]).returncode == 6


# ----------------------------------------------------------------------------------------- 6: stoq list

def parse_list(text: str) -> tuple[dict[str, dict[str, tuple[str, str]]], dict[str, str]]:
    """``stoq list`` text -> ({category: {name: (version, description)}}, {failed name: error})."""
    categories: dict[str, dict[str, tuple[str, str]]] = {}
    failed: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            assert line.endswith(":"), line
            current = line[:-1]
            continue
        assert current is not None, line
        name, status, *rest = line.split(None, 2)
        if status == "ERROR":
            assert current == "failed to load", line
            failed[name] = rest[0] if rest else ""
        else:
            categories.setdefault(current, {})[name] = (status, rest[0] if rest else "")
    return categories, failed


BUNDLED = {
    "yara": ("stoq_plugins.yara", "YaraPlugin"),
    "peinfo": ("stoq_plugins.peinfo", "PeinfoPlugin"),
    "decompress": ("stoq_plugins.decompress", "DecompressPlugin"),
}


def bundled_expectations() -> dict[str, tuple[str, str, str]]:
    import importlib

    out = {}
    for name, (module, attr) in BUNDLED.items():
        cls = getattr(importlib.import_module(module), attr)
        out[name] = (cls.category, cls.version, cls.summary())
    return out


def test_list_shows_bundled_plugins_by_category(run_stoq: Run) -> None:
    proc = run_stoq("list")
    assert proc.returncode == 0, proc.stderr.decode()
    categories, failed = parse_list(proc.stdout.decode())
    assert failed == {}
    expected = bundled_expectations()
    assert {c for c, _, _ in expected.values()} == {"worker", "extractor"}
    for name, (category, version, summary) in expected.items():
        assert categories[category][name] == (version, summary), name

    proc = run_stoq("list", "--format", "json")
    assert proc.returncode == 0, proc.stderr.decode()
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for name, (category, version, summary) in expected.items():
        row = rows[name]
        assert (row["category"], row["version"], row["description"], row["error"]) == (category, version, summary, None)
        assert row["distribution"].replace("_", "-").lower() == "stoq-analysis"


def test_list_reports_broken_plugins_and_keeps_the_others(run_stoq: Run, testplugins_site: Path) -> None:
    proc = run_stoq("list", env=with_pythonpath(testplugins_site))
    # A plugin that failed to load is a configuration problem: exit 4 (ExitCode.CONFIG), after listing all.
    assert proc.returncode == 4, proc.stderr.decode()
    categories, failed = parse_list(proc.stdout.decode())
    assert set(failed) == {"broken", "missing", "nocategory", "exiting"}
    assert "not a stoq Plugin class" in failed["broken"]
    assert "ModuleNotFoundError" in failed["missing"] and "stoq_testplugins_nowhere" in failed["missing"]
    assert "has category None" in failed["nocategory"] and failed["exiting"] == "SystemExit: 3"

    import stoq_testplugins as tp  # on sys.path through the fixture

    for cls in (tp.Boom, tp.Spin, tp.Sleeper, tp.Segv, tp.Nest, tp.Misfit):
        assert categories[cls.category][cls.name] == (cls.version, cls.summary())
    for name, (category, version, summary) in bundled_expectations().items():
        assert categories[category][name] == (version, summary)

    # In JSON the failures are data, each with its error, and the exit code is the same 4.
    proc = run_stoq("list", "--format", "json", env=with_pythonpath(testplugins_site))
    assert proc.returncode == 4, proc.stderr.decode()
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert {n for n, r in rows.items() if r["error"]} == {"broken", "missing", "nocategory", "exiting"}
    assert rows["broken"]["error"] == failed["broken"] and rows["missing"]["error"] == failed["missing"]
    assert rows["boom"]["distribution"] == "stoq-testplugins" and rows["boom"]["error"] is None


# ------------------------------------------------------------------------------------ 7: stoq submit

def test_submit_without_broker_runs_embedded(run_stoq: Run, stoq_env: dict[str, str]) -> None:
    assert "STOQ_BROKER_URL" not in stoq_env
    sample = CORPUS / "test.gz"
    proc = run_stoq("submit", str(sample))
    assert proc.returncode == 0, proc.stderr.decode()
    assert "running embedded" in proc.stderr.decode()
    [doc] = jsonl(proc.stdout)
    validate(doc)
    assert real(doc["source"]["path"]) == real(sample)
    content = gzip.decompress(sample.read_bytes())
    assert [p["sha256"] for p in doc["results"]] == [sha256_file(sample), hashlib.sha256(content).hexdigest()]
    # Stored like a scan.
    proc = run_stoq("results", doc["scan_id"], "--format", "jsonl")
    assert proc.returncode == 0 and jsonl(proc.stdout) == [doc]


# -------------------------------------------------------------------------- 8: configuration precedence

def test_config_precedence_toml_then_env_then_option(run_stoq: Run, tmp_path: Path) -> None:
    sample = nested_zip(tmp_path / "outer.zip")
    data = sample.read_bytes()

    def depths(max_depth: int) -> Counter[int]:
        return Counter(d for d, _, _ in zip_payloads(data, sample.name, max_depth))

    # The sample must tell the three depths apart.
    assert depths(0) != depths(1) != depths(2) != depths(99)
    assert sum(depths(0).values()) == 1

    def scan(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = run_stoq("scan", str(sample), *args, env=env)
        assert proc.returncode == 0, proc.stderr.decode()
        [doc] = jsonl(proc.stdout)
        validate(doc)
        return doc

    assert len(scan()["results"]) == sum(depths(8).values())  # built-in default: 8

    (tmp_path / "stoq.toml").write_text("[stoq]\nmax_depth = 0\n")  # the working directory of run_stoq
    doc = scan()
    assert doc["payloads"] == 1 and Counter(p["depth"] for p in doc["results"]) == depths(0)
    assert root(doc)["sha256"] == hashlib.sha256(data).hexdigest()

    doc = scan(env={"STOQ_MAX_DEPTH": "1"})
    assert doc["payloads"] == sum(depths(1).values())
    assert Counter(p["depth"] for p in doc["results"]) == depths(1)

    doc = scan("--max-depth", "2", env={"STOQ_MAX_DEPTH": "1"})
    assert doc["payloads"] == sum(depths(2).values())
    assert Counter(p["depth"] for p in doc["results"]) == depths(2)
    assert Counter(p["sha256"] for p in doc["results"]) == Counter(s for _, _, s in zip_payloads(data, sample.name, 2))


# ------------------------------------------------------------------------------ 9: stdout and stderr

def test_stdout_is_only_documents_and_diagnostics_go_to_stderr(run_stoq: Run, tmp_path: Path,
                                                              testplugins_site: Path) -> None:
    missing = tmp_path / "absent.bin"
    files = [CORPUS / "test.zip", CORPUS / "test.gz", CORPUS / "test.txt"]
    proc = run_stoq("-vv", "scan", *map(str, files), str(missing), "--workers", "boom", "-o", "boom.trigger=Lorem",
                    env=with_pythonpath(testplugins_site, {"PYTHONWARNINGS": "always"}))
    assert proc.returncode == 3  # the worst problem wins: a missing input over plugin errors
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    docs = jsonl(proc.stdout)  # every stdout line is a JSON document
    assert len(docs) == len(files) == len(stdout.splitlines())
    for doc in docs:
        validate(doc)
    assert any(d["errors"] for d in docs)
    assert str(missing) in stderr and str(missing) not in stdout
    for line in filter(str.strip, stderr.splitlines()):
        assert line not in stdout


def test_bad_template_and_unreachable_cluster_are_configuration_errors(run_stoq, tmp_path: Path) -> None:
    bad = tmp_path / "bad.j2"
    bad.write_text("{{ doc.results[0].nope }}\n")
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--template", str(bad))
    assert proc.returncode == 4 and proc.stdout == b""
    assert b"template failed on scan" in proc.stderr and b"nope" in proc.stderr
    broken = tmp_path / "broken.j2"
    broken.write_text("{% for %}\n")
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--template", str(broken))
    assert proc.returncode == 4 and b"template" in proc.stderr
    proc = run_stoq("submit", str(CORPUS / "test.txt"), env={"STOQ_BROKER_URL": "redis://127.0.0.1:1/0",
                                                             "STOQ_RESULT_BACKEND": "redis://127.0.0.1:1/1"})
    assert proc.returncode == 4 and b"cannot reach the cluster" in proc.stderr and proc.stdout == b""


# ------------------------------------------------------------------------------------ 10: progress bar

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS_FILES = [CORPUS / "test.txt", CORPUS / "test.gz", CORPUS / "test.zip"]


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_progress_option_draws_the_bar_on_a_stderr_that_is_not_a_terminal(run_stoq: Run, term: str) -> None:
    # stderr is a pipe here. TERM and COLUMNS are set so that the runner's own do not change the drawing.
    proc = run_stoq("scan", *map(str, PROGRESS_FILES), "--progress", "--format", "jsonl",
                    env={"TERM": term, "COLUMNS": "120"})
    assert proc.returncode in (0, 1), proc.stderr.decode()
    docs = jsonl(proc.stdout)  # stdout holds the JSON lines and nothing else: no bar, no control codes
    assert len(docs) == len(proc.stdout.decode().splitlines()) == len(PROGRESS_FILES)
    assert [real(d["source"]["path"]) for d in docs] == [real(p) for p in PROGRESS_FILES]
    assert b"\x1b" not in proc.stdout and b"scanning" not in proc.stdout
    stderr = ANSI.sub("", proc.stderr.decode())
    assert "scanning" in stderr
    # MofNCompleteColumn draws "done/total"; the last state drawn is the whole total.
    assert re.findall(r"(\d+)/3\b", stderr)[-1] == "3", stderr
    assert stderr.endswith("\n")


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_no_progress_bar_when_stderr_is_not_a_terminal_unless_asked(run_stoq: Run, flag: list[str]) -> None:
    proc = run_stoq("scan", *map(str, PROGRESS_FILES), *flag, "--format", "jsonl", env={"TERM": "xterm"})
    assert proc.returncode in (0, 1), proc.stderr.decode()
    assert len(jsonl(proc.stdout)) == len(PROGRESS_FILES)
    assert b"scanning" not in proc.stderr and b"/3" not in proc.stderr and b"\x1b" not in proc.stderr
