"""The mongodb connector with pymongo against a MongoDB wire-protocol test server (tests/mongowire.py:
no MongoDB server can be installed here): one document per scan with its payloads as an array,
an index on their sha256, idempotent upserts by scan id, a server that is down reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import CORPUS, validate
from mongowire import MongoWireServer
from stoq.connectors import deliver
from stoq_plugins.mongodb import MongodbConnector


@pytest.fixture
def server() -> Iterator[MongoWireServer]:
    with MongoWireServer() as running:
        yield running


def connector(url: str, **options: Any) -> MongodbConnector:
    plugin = MongodbConnector(MongodbConnector.Options(url=url, **options))
    plugin.setup()
    return plugin


def scan_document(tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {
        "STOQ_ARCHIVE": str(tmp_path / "archive"), "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", str(CORPUS / "test.zip"), "--format",
                          "json", "--no-store", "--jobs", "1"], env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    return doc


def test_one_document_per_scan_payloads_as_an_array_indexed_by_sha256(tmp_path: Path, server: MongoWireServer) -> None:
    doc = scan_document(tmp_path)
    validate(doc)
    plugin = connector(f"{server.url}/results")
    plugin.save([doc])
    stored = server.store.dbs["results"]["scans"].docs
    assert list(stored) == [doc["scan_id"]]
    assert stored[doc["scan_id"]] == doc | {"_id": doc["scan_id"]}
    indexes = {i["name"]: dict(i["key"]) for i in server.store.dbs["results"]["scans"].indexes}
    assert indexes == {"_id_": {"_id": 1}, "results_sha256": {"results.sha256": 1}}
    import pymongo

    client = pymongo.MongoClient(server.url, serverSelectionTimeoutMS=2000)
    child = doc["results"][1]["sha256"]
    assert [d["scan_id"] for d in client.results.scans.find({"results.sha256": child})] == [doc["scan_id"]]
    client.close()


def test_a_document_delivered_again_replaces_itself(server: MongoWireServer) -> None:
    plugin = connector(server.url, collection="docs")
    first = {"scan_id": "s-1", "results": [{"sha256": "a" * 64}], "payloads": 1}
    again = {"scan_id": "s-1", "results": [{"sha256": "b" * 64}], "payloads": 1}
    other = {"scan_id": "s-2", "results": [], "payloads": 0}
    plugin.save([first, other])
    plugin.save([first])
    plugin.save([again])
    stored = server.store.dbs["stoq"]["docs"].docs  # no database in the URL: the option's default
    assert stored == {"s-1": again | {"_id": "s-1"}, "s-2": other | {"_id": "s-2"}}


def test_integers_beyond_bson_are_kept_as_text(server: MongoWireServer) -> None:
    connector(server.url).save([{"scan_id": "big", "results": [{"workers": {"x": {"n": 1 << 70, "m": -5}}}]}])
    stored = server.store.dbs["stoq"]["scans"].docs["big"]
    assert stored["results"][0]["workers"]["x"] == {"n": str(1 << 70), "m": -5}


def test_a_server_that_is_down_fails_the_batch_with_a_named_error(server: MongoWireServer) -> None:
    plugin = connector(server.url, timeout_ms=300)
    server.stop()
    failures = deliver([plugin], [{"scan_id": "lost", "results": []}])
    assert len(failures) == 1
    assert failures[0].startswith("connector 'mongodb' failed on 1 document(s): ServerSelectionTimeoutError: ")


def test_an_embedded_scan_sends_its_document(tmp_path: Path, server: MongoWireServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {
        "STOQ_ARCHIVE": str(tmp_path / "archive"), "STOQ_MONGODB__URL": f"{server.url}/cli",
        "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", str(CORPUS / "test.txt"), "--format", "json",
                          "--no-store", "--connectors", "mongodb"], env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    assert server.store.dbs["cli"]["scans"].docs == {doc["scan_id"]: doc | {"_id": doc["scan_id"]}}


def test_a_server_that_goes_away_and_comes_back_gets_each_scan_once(server: MongoWireServer) -> None:
    """At-least-once delivery (a failed batch is delivered again) meets idempotent upserts: after an
    outage and a redelivery of everything, each scan is stored exactly once."""
    plugin = connector(f"{server.url}/outage", timeout_ms=2000)
    docs = [{"scan_id": f"scan-{i}", "results": [{"sha256": f"{i:064x}"}], "payloads": 1} for i in range(6)]
    assert deliver([plugin], docs[:3]) == []
    port = int(server.url.rsplit(":", 1)[1])
    server.stop()
    failures = deliver([plugin], docs[3:])
    assert len(failures) == 1 and failures[0].startswith("connector 'mongodb' failed on 3 document(s): ")
    assert failures[0].split(": ")[1] in ("AutoReconnect", "ServerSelectionTimeoutError")  # pymongo's ConnectionFailures
    back = MongoWireServer(port=port, store=server.store).start()  # the same data, as a restarted mongod has
    try:
        assert deliver([plugin], docs) == []  # the failed batch again, and the delivered ones once more
        stored = back.store.dbs["outage"]["scans"].docs
        assert sorted(stored) == [f"scan-{i}" for i in range(6)]
        assert all(stored[d["scan_id"]] == d | {"_id": d["scan_id"]} for d in docs)
    finally:
        back.stop()
