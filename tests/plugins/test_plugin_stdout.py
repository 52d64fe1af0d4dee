"""The ``stdout`` connector: documents as JSON lines on file descriptor 1, nothing else there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import CORPUS


def test_documents_on_stdout_only(run_stoq: Any, tmp_path: Path) -> None:
    """With a template that prints nothing, stdout holds exactly the connector's lines: each stored
    document once, whole, compact JSON; the summary stays on stderr."""
    (tmp_path / "quiet.j2").write_text("")
    files = [CORPUS / "test.zip", CORPUS / "test.txt", CORPUS / "test.pdf", CORPUS / "test.png"]
    proc = run_stoq("scan", *map(str, files), "--connectors", "stdout", "--template", str(tmp_path / "quiet.j2"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert sorted(d["source"]["path"] for d in docs) == sorted(map(str, files))
    for line, doc in zip(lines, docs):
        assert line == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        stored = run_stoq("results", doc["scan_id"], "--format", "jsonl")
        assert json.loads(stored.stdout) == doc
    assert b"4 document(s) stored" in proc.stderr
