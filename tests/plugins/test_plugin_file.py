"""The ``file`` and ``stdout`` connectors, and several connectors at once, embedded."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from helpers import CORPUS, validate

from stoq_plugins.file import FileConnector


def test_one_file_per_document_in_dated_folders_with_jsonl_and_stdout_at_once(run_stoq: Any, tmp_path: Path) -> None:
    """`--connectors file,jsonl,stdout`: each gets every document; the file connector's are named by scan
    id under the scan's date; the stdout connector's lines follow the CLI's own."""
    out, sink = tmp_path / "results", tmp_path / "sink.jsonl"
    files = [CORPUS / "test.zip", CORPUS / "test.txt", CORPUS / "test.pdf"]
    proc = run_stoq("scan", *map(str, files), "--connectors", "file,jsonl,stdout", "-o", f"file.directory={out}",
                    "-o", f"jsonl.path={sink}", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    # Each document twice, whole lines: printed by the CLI, then by the stdout connector with its batch.
    printed = [d for i, d in enumerate(lines) if d["scan_id"] not in {e["scan_id"] for e in lines[:i]}]
    assert len(printed) == 3 and sorted(map(str, lines)) == sorted(map(str, printed * 2))
    for doc in printed:
        y, m, d = doc["date"][:10].split("-")
        path = out / y / m / d / f"{doc['scan_id']}.json"
        assert json.loads(path.read_bytes()) == doc
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        validate(doc)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(f"{d['scan_id']}.json" for d in printed)
    assert [json.loads(line) for line in sink.read_bytes().splitlines()] == printed


def document(i: int, date: str = "2026-12-06T06:00:00Z") -> dict[str, Any]:
    return {"scan_id": f"scan-{i}", "date": date, "pad": "x" * 5000, "results": [], "errors": []}


def test_writes_are_atomic_and_idempotent(tmp_path: Path) -> None:
    plugin = FileConnector(FileConnector.Options(directory=tmp_path, indent=True))
    plugin.setup()
    plugin.save([document(1), document(2, "2025-01-31T23:59:59.999Z")])
    plugin.save([document(1)])  # a retry replaces the file: still one per scan
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "2025/01/31/scan-2.json", "2026/12/06/scan-1.json"]
    assert json.loads((tmp_path / "2026/12/06/scan-1.json").read_text()) == document(1)
    assert (tmp_path / "2026/12/06/scan-1.json").read_text().startswith("{\n  ")


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = FileConnector(FileConnector.Options(directory=tmp_path))
    plugin.setup()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        plugin.save([document(1)])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_jsonl_layout_appends_whole_lines_from_concurrent_writers(tmp_path: Path) -> None:
    plugin = FileConnector(FileConnector.Options(directory=tmp_path, layout="jsonl"))
    plugin.setup()
    threads = [threading.Thread(target=lambda t=t: [plugin.save([document(t * 100 + j) for j in range(5)])
                                                   for _ in range(4)]) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "2026/12/06.jsonl").read_bytes().splitlines()
    assert len(lines) == 4 * 4 * 5 and all(json.loads(line)["pad"] == "x" * 5000 for line in lines)


def test_tlp_withholds_from_a_lower_connector_and_counts_unlabelled_as_clear(run_stoq: Any, tmp_path: Path) -> None:
    from stoq.connectors import deliver_each

    low = FileConnector(FileConnector.Options(directory=tmp_path / "low", max_tlp="green"))
    high = FileConnector(FileConnector.Options(directory=tmp_path / "high"))
    for plugin in (low, high):
        plugin.setup()
    docs = [document(1) | {"source": {"meta": {"tlp": t}}} for t in ("red", "amber", "green", "clear")]
    docs = [d | {"scan_id": f"s{i}"} for i, d in enumerate(docs)] + [document(9)]
    outcomes = deliver_each([low, high], docs)
    assert [(o.sent, o.withheld) for o in outcomes] == [(["s2", "s3", "scan-9"], ["s0", "s1"]),
                                                        (["s0", "s1", "s2", "s3", "scan-9"], [])]
    assert sorted(p.stem for p in (tmp_path / "low").rglob("*.json")) == ["s2", "s3", "scan-9"]
