"""``stoq results`` with what the table shows: any unambiguous beginning of a sha256 or a scan id
(``sha256:`` as printed is accepted), the candidates listed when it is ambiguous (exit code 2).
On SQLite, and on PostgreSQL (needs the server: run under the lock)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from helpers import database, pg_admin, pg_url

Run = Callable[..., subprocess.CompletedProcess[bytes]]
PG_DB = database("stoq_cli_results")


def two_contents_sharing_a_prefix(length: int = 3) -> tuple[bytes, bytes, str]:
    """Two contents whose sha256 begin with the same ``length`` hex digits, not with ``0`` (scan ids,
    UUIDv7 of this decade, begin with ``0``)."""
    seen: dict[str, bytes] = {}
    for i in itertools.count():
        data = f"content number {i}\n".encode()
        head = hashlib.sha256(data).hexdigest()[:length]
        if head[0] == "0":
            continue
        if head in seen:
            return seen[head], data, head
        seen[head] = data
    raise AssertionError("unreachable")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    from sqlalchemy import text

    with pg_admin().connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{PG_DB}"'))
    return {"STOQ_DATABASE_URL": pg_url(PG_DB)}


def test_results_takes_any_unambiguous_prefix(run_stoq: Run, tmp_path: Path, store_env: dict[str, str]) -> None:
    if store_env:
        assert run_stoq("db", "upgrade", env=store_env).returncode == 0
    first, second, common = two_contents_sharing_a_prefix()
    (tmp_path / "a.txt").write_bytes(first)
    (tmp_path / "b.txt").write_bytes(second)
    proc = run_stoq("scan", "a.txt", "b.txt", env=store_env)
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    scan_a, scan_b = docs[0]["scan_id"], docs[1]["scan_id"]
    sha_a, sha_b = hashlib.sha256(first).hexdigest(), hashlib.sha256(second).hexdigest()

    def results(key: str) -> subprocess.CompletedProcess[bytes]:
        return run_stoq("results", key, "--format", "jsonl", env=store_env)

    for key in (sha_a[:16], f"sha256:{sha_a[:16]}", sha_a[:16].upper(), sha_a, scan_a, scan_a[:30]):
        proc = results(key)
        assert proc.returncode == 0, (key, proc.stderr)
        assert [json.loads(line)["scan_id"] for line in proc.stdout.splitlines()] == [scan_a], key

    proc = results(common)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.decode().splitlines() == [
        f"stoq: {common} is ambiguous: it begins sha256 {min(sha_a, sha_b)}; sha256 {max(sha_a, sha_b)} "
        "(give more characters)"]

    shared = os.path.commonprefix([scan_a, scan_b])
    assert shared  # UUIDv7 ids of one run share their time prefix
    expected = [f"scan {s}" for s in sorted((scan_a, scan_b))] + [
        f"sha256 {h}" for h in sorted((sha_a, sha_b)) if h.startswith(shared)]
    proc = results(shared)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        f"stoq: {shared} is ambiguous: it begins {'; '.join(expected)} (give more characters)"]

    proc = results("fff" + "0" * 61 if not sha_a.startswith("fff") else "eee")
    assert proc.returncode == 6


def test_a_duplicate_is_named_by_its_path_in_the_table(run_stoq: Run, tmp_path: Path) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("docs/readme.txt", b"the same words\n")
        archive.writestr("copy.txt", b"the same words\n")
    (tmp_path / "dup.zip").write_bytes(buffer.getvalue())
    proc = run_stoq("scan", "dup.zip", "--format", "table")
    lines = proc.stdout.decode().splitlines()
    assert lines[3].endswith("plugins:-  (duplicate of dup.zip > docs/readme.txt)"), lines
