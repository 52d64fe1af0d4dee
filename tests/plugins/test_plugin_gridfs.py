"""The gridfs archiver with pymongo against a MongoDB wire-protocol test server (tests/mongowire.py:
no MongoDB server can be installed here; the server speaks OP_MSG over TCP and keeps fs.files and
fs.chunks in memory): files named by sha256, chunks, idempotent puts, damage and an unreachable
server as named errors, and an embedded scan whose payloads all land in GridFS."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers import CORPUS, validate
from mongowire import MongoWireServer
from stoq.archive import open_archive
from stoq.plugin import ArchiveDamaged, ArchiveError, ArchiverPlugin, ArchiveUnavailable


@pytest.fixture
def server() -> Iterator[MongoWireServer]:
    with MongoWireServer() as running:
        yield running


def archive(server: MongoWireServer, **options: object) -> ArchiverPlugin:
    made = open_archive("gridfs", f"{server.url}/payloads", {"chunk_size": 64 * 1024, **options})
    made.prepare()
    return made


def test_payloads_are_gridfs_files_named_by_sha256_in_chunks(server: MongoWireServer) -> None:
    made = archive(server)
    payloads = [b"", b"stoq", os.urandom(300_000)]
    for data in payloads:
        made.put(hashlib.sha256(data).hexdigest(), data)
    files = server.store.dbs["payloads"]["fs.files"].docs.values()
    chunks = list(server.store.dbs["payloads"]["fs.chunks"].docs.values())
    assert sorted(f["filename"] for f in files) == sorted(hashlib.sha256(d).hexdigest() for d in payloads)
    for doc in files:
        data = next(d for d in payloads if hashlib.sha256(d).hexdigest() == doc["filename"])
        assert (doc["length"], doc["chunkSize"], doc["metadata"]) == (len(data), 64 * 1024,
                                                                      {"sha256": doc["filename"], "size": len(data)})
        mine = sorted((c for c in chunks if c["files_id"] == doc["_id"]), key=lambda c: c["n"])
        assert len(mine) == math.ceil(len(data) / (64 * 1024))
        assert b"".join(c["data"] for c in mine) == data
    for data in payloads:
        sha = hashlib.sha256(data).hexdigest()
        assert made.exists(sha)
        got = made.get(sha)
        assert hashlib.sha256(got).hexdigest() == sha and got == data
    assert not made.exists("0" * 64)
    with pytest.raises(ArchiveError, match=f"payload {'0' * 64} is not in the archive mongodb://127.0.0.1:"):
        made.get("0" * 64)
    with pytest.raises(ArchiveError, match="not a sha256"):
        made.get("fs.files")
    made.delete(hashlib.sha256(b"stoq").hexdigest())
    assert not made.exists(hashlib.sha256(b"stoq").hexdigest())
    made.close()


def test_a_second_put_of_a_stored_payload_writes_nothing(server: MongoWireServer) -> None:
    made = archive(server)
    data = b"twice" * 1000
    made.put(hashlib.sha256(data).hexdigest(), data)
    inserts = server.store.commands.count("insert")
    made.put(hashlib.sha256(data).hexdigest(), data)
    assert server.store.commands.count("insert") == inserts
    assert len(server.store.dbs["payloads"]["fs.files"].docs) == 1


def test_damaged_chunks_are_named_errors(server: MongoWireServer) -> None:
    made = archive(server)
    data = os.urandom(200_000)
    sha = hashlib.sha256(data).hexdigest()
    made.put(sha, data)
    chunks = server.store.dbs["payloads"]["fs.chunks"].docs
    first = next(c for c in chunks.values() if c["n"] == 0)
    first["data"] = b"\0" * len(first["data"])  # other bytes of the same length, behind the archiver's back
    with pytest.raises(ArchiveDamaged, match=f"payload {sha} is damaged in the archive .*: its bytes are not that payload's"):
        made.get(sha)
    del chunks[first["_id"]]  # a chunk lost
    with pytest.raises(ArchiveDamaged, match=f"payload {sha} is damaged in the archive"):
        made.get(sha, verify=False)


def test_a_server_that_is_down_is_a_named_error_not_a_crash(server: MongoWireServer) -> None:
    made = archive(server, timeout_ms=300)
    data = b"kept"
    made.put(hashlib.sha256(data).hexdigest(), data)
    server.stop()
    with pytest.raises(ArchiveUnavailable, match=r"cannot read payload [0-9a-f]{64}: cannot reach the archive mongodb://"):
        made.get(hashlib.sha256(data).hexdigest())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = open_archive("gridfs", f"mongodb://stoq:s3cret@127.0.0.1:{port}/x", {"timeout_ms": 300})
    with pytest.raises(ArchiveUnavailable, match=rf"cannot open the database: cannot reach the archive mongodb://stoq:\*\*\*@127\.0\.0\.1:{port}/x"):
        closed.prepare()


def test_an_embedded_scan_archives_every_payload_in_gridfs(tmp_path: Path, server: MongoWireServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {
        "STOQ_ARCHIVER": "gridfs", "STOQ_ARCHIVE": f"{server.url}/scan", "STOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'stoq.db'}",
        "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", str(CORPUS / "test.zip"), "--format", "json",
                          "--jobs", "1"], env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    validate(doc)
    stored = {p["sha256"] for p in doc["results"] if p["duplicate_of"] is None}
    assert len(stored) > 1
    assert {f["filename"] for f in server.store.dbs["scan"]["fs.files"].docs.values()} == stored
    made = open_archive("gridfs", f"{server.url}/scan")
    for sha in stored:
        assert hashlib.sha256(made.get(sha)).hexdigest() == sha
