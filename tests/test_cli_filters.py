"""``stoq scan`` with the file filters (``--include``, ``--exclude``, ``--min-size``, ``--max-size``,
``--newer-than``) and ``--meta``: the exact sets of files scanned, the count of those left out on
stderr (exit code unaffected), the metadata kept in each document; bad values are usage errors."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from stoq.filters import FileFilter, parse_since, parse_size
from stoq.submission import MetaError, parse_meta


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "tree"
    (top / "sub" / "tmp").mkdir(parents=True)
    files = {"a.exe": 10, "b.txt": 100, "c.TXT": 1000, "sub/d.exe": 5000, "sub/e.log": 0, "sub/tmp/f.exe": 20}
    old = time.time() - 10 * 86400
    for name, size in files.items():
        path = top / name
        path.write_bytes(b"x" * size)
        if name in ("b.txt", "sub/e.log"):
            os.utime(path, (old, old))  # ten days old
    return top


def scanned(run_stoq: Callable[..., Any], top: Path, *args: str) -> tuple[set[str], str, int]:
    got = run_stoq("scan", str(top), "--recursive", "--no-store", *args)
    names = {os.path.relpath(json.loads(line)["source"]["path"], top) for line in got.stdout.splitlines()}
    return names, got.stderr.decode(), got.returncode


@pytest.mark.parametrize("args, expected, left_out", [
    (["--include", "*.exe"], {"a.exe", "sub/d.exe", "sub/tmp/f.exe"}, "3 file(s) left out by the filters (3 by --include)"),
    (["--exclude", "*.exe", "--exclude", "*.log"], {"b.txt", "c.TXT"}, "4 file(s) left out by the filters (4 by --exclude)"),
    (["--include", "*.exe", "--exclude", "*/tmp/*"], {"a.exe", "sub/d.exe"},
     "4 file(s) left out by the filters (1 by --exclude, 3 by --include)"),
    (["--min-size", "20", "--max-size", "1k"], {"b.txt", "c.TXT", "sub/tmp/f.exe"},
     "3 file(s) left out by the filters (1 by --max-size, 2 by --min-size)"),
    (["--newer-than", "3d"], {"a.exe", "c.TXT", "sub/d.exe", "sub/tmp/f.exe"},
     "2 file(s) left out by the filters (2 by --newer-than)"),
    (["--include", "*.txt"], {"b.txt"}, "5 file(s) left out by the filters (5 by --include)"),  # case matters
])
def test_filters_select_exact_sets(run_stoq: Callable[..., Any], tree: Path, args: list[str], expected: set[str],
                                   left_out: str) -> None:
    names, err, code = scanned(run_stoq, tree, *args)
    assert code == 0, err
    assert names == expected
    assert f"stoq: {left_out}\n" in err


def test_no_filter_no_count(run_stoq: Callable[..., Any], tree: Path) -> None:
    names, err, code = scanned(run_stoq, tree)
    assert code == 0 and len(names) == 6 and "left out" not in err


@pytest.mark.parametrize("args, message", [
    (["--min-size", "ten"], "size 'ten'"),
    (["--newer-than", "yesterday"], "--newer-than 'yesterday'"),
    (["--meta", "TLP=red"], "meta key 'TLP'"),
    (["--meta", "tlp=purple"], "meta tlp='purple'"),
    (["--meta", "novalue"], "--meta 'novalue' is not of the form KEY=VALUE"),
    (["--meta", "k=" + "v" * 1025], "at most 1024"),
])
def test_bad_values_are_usage_errors(run_stoq: Callable[..., Any], tree: Path, args: list[str], message: str) -> None:
    names, err, code = scanned(run_stoq, tree, *args)
    assert code == 2 and not names
    assert message in err


def test_meta_is_kept_in_every_document_and_stored(run_stoq: Callable[..., Any], tree: Path) -> None:
    got = run_stoq("scan", str(tree / "a.exe"), str(tree / "b.txt"), "--meta", "tlp=Amber+Strict", "--meta", "case=IR-7",
                   "--meta", "case=IR-8")
    assert got.returncode == 0, got.stderr
    docs = [json.loads(line) for line in got.stdout.splitlines()]
    assert [d["source"] for d in docs] == [{"path": str(tree / n), "meta": {"tlp": "amber+strict", "case": "IR-8"}}
                                           for n in ("a.exe", "b.txt")]
    again = run_stoq("results", docs[0]["scan_id"], "--format", "jsonl")
    assert json.loads(again.stdout)["source"] == docs[0]["source"]


def test_parsers() -> None:
    assert [parse_size(s) for s in ("0", "10", "10k", "2M", "1g", "3KiB")] == [0, 10, 10240, 2 << 20, 1 << 30, 3072]
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1.5d", now=200_000.0) == 200_000.0 - 1.5 * 86400
    assert parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=timezone.utc).timestamp()
    assert parse_since("2026-01-31T08:00:00+01:00") == datetime(2026, 1, 31, 7, tzinfo=timezone.utc).timestamp()
    f = FileFilter(include=["*.exe"], exclude=["*/tmp/*"])
    assert [f.why_not(p, rel=r) for p, r in (("/tmp/a/x.exe", "a/x.exe"), ("/a/tmp/x.exe", "a/tmp/x.exe"),
                                             ("/a/x.txt", "x.txt"))] == [None, "--exclude", "--include"]
    assert parse_meta(["tlp=WHITE", "a.b-c_d=1"]) == {"tlp": "white", "a.b-c_d": "1"}
    with pytest.raises(MetaError, match="at most 32"):
        parse_meta([f"k{i}=v" for i in range(33)])
