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


def test_processes_appending_at_once_never_interleave_lines(tmp_path: Path) -> None:
    import multiprocessing

    from stoq_plugins.jsonl import JsonlConnector

    sink = tmp_path / "sink.jsonl"
    big = "x" * 200_000  # larger than a pipe buffer or a page: a torn write would show

    def append(tag: int) -> None:
        connector = JsonlConnector(JsonlConnector.Options(path=str(sink)))
        connector.setup()
        for i in range(20):
            connector.save([{"scan_id": f"{tag}-{i}-{j}", "pad": big} for j in range(3)])

    procs = [multiprocessing.get_context("fork").Process(target=append, args=(t,)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = sink.read_bytes().splitlines()
    assert sorted(json.loads(line)["scan_id"] for line in lines) == sorted(
        f"{t}-{i}-{j}" for t in range(4) for i in range(20) for j in range(3))
    assert all(json.loads(line)["pad"] == big for line in lines)
