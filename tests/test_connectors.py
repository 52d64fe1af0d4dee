"""Connector plugins in the embedded mode (the cluster's chain is in test_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import CORPUS, validate


def test_jsonl_connector_receives_every_printed_document(run_stoq, tmp_path: Path) -> None:
    sink = tmp_path / "sink.jsonl"
    proc = run_stoq("scan", str(CORPUS / "test.zip"), str(CORPUS / "test.txt"), "--connectors", "jsonl",
                    "-o", f"jsonl.path={sink}", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    sunk = [json.loads(line) for line in sink.read_bytes().splitlines()]
    assert len(printed) == 2 and sorted(sunk, key=lambda d: d["scan_id"]) == sorted(printed, key=lambda d: d["scan_id"])
    for doc in sunk:
        validate(doc)


def test_bad_connectors_are_configuration_errors(run_stoq, tmp_path: Path) -> None:
    sample = str(CORPUS / "test.txt")
    for args, says in ((["--connectors", "nope"], b"unknown plugin 'nope'"),
                       (["--connectors", "yara"], b"is a worker, not a connector"),
                       (["--connectors", "jsonl"], b"jsonl.path is not set")):
        proc = run_stoq("scan", sample, *args)
        assert proc.returncode == 4 and says in proc.stderr and proc.stdout == b"", (args, proc.stderr)


def test_a_failing_connector_is_reported_and_the_scan_goes_on(run_stoq, tmp_path: Path) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--connectors", "jsonl", "-o",
                    f"jsonl.path={tmp_path / 'missing-dir' / 'sink.jsonl'}")
    assert proc.returncode == 5, proc.stderr
    assert b"connector 'jsonl' failed on 1 document(s): FileNotFoundError" in proc.stderr
    (doc,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert doc["results"][0]["filename"] == "test.txt"
