"""The s3 archiver against a local S3-compatible server (moto's standalone server on a loopback port,
tests/s3server.py): content-addressed keys, SHA-256 checksums the server keeps, multipart uploads,
idempotent puts, damage and an unreachable server as named errors, and an embedded scan whose every
payload lands in the bucket."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from helpers import CORPUS, validate
from s3server import CREDENTIALS, flaky, raw_client, s3_server
from stoq.archive import open_archive
from stoq.config import Settings
from stoq.engine import Engine
from stoq.plugin import ArchiveDamaged, ArchiveError, ArchiverPlugin, ArchiveUnavailable

MiB = 1 << 20


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


def archive(endpoint: str, bucket: str, **options: Any) -> ArchiverPlugin:
    made = open_archive("s3", f"s3://{bucket}/payloads", {"endpoint_url": endpoint, "create_bucket": True, **options})
    made.prepare()
    return made


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def counting(made: ArchiverPlugin, operation: str) -> list[str]:
    """Records each request of ``operation`` the archive's client sends (botocore's event hooks)."""
    sent: list[str] = []
    made._client.get().meta.events.register(f"before-call.s3.{operation}",  # type: ignore[attr-defined]
                                            lambda **kw: sent.append(kw["params"]["url_path"]))
    return sent


def test_payloads_are_objects_under_their_sha256_with_the_servers_checksum(endpoint: str) -> None:
    made = archive(endpoint, "keys")
    payloads = [b"", b"stoq", os.urandom(70_000)]
    for data in payloads:
        made.put(hashlib.sha256(data).hexdigest(), data)
    client = raw_client(endpoint)
    listed = sorted(o["Key"] for o in client.list_objects_v2(Bucket="keys")["Contents"])
    shas = [hashlib.sha256(d).hexdigest() for d in payloads]
    assert listed == sorted(f"payloads/{sha[:2]}/{sha}" for sha in shas)
    for data, sha in zip(payloads, shas):
        head = client.head_object(Bucket="keys", Key=f"payloads/{sha[:2]}/{sha}", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == b64sha(data)
        assert head["ContentLength"] == len(data)
        got = made.get(sha)
        assert hashlib.sha256(got).hexdigest() == sha and got == data
        assert made.exists(sha)
    assert not made.exists("0" * 64)
    with pytest.raises(ArchiveError, match=f"payload {'0' * 64} is not in the archive s3://keys/payloads"):
        made.get("0" * 64)
    with pytest.raises(ArchiveError, match="not a sha256"):
        made.get("../../etc/passwd")
    made.delete(shas[1])
    assert not made.exists(shas[1])
    made.close()


def test_a_second_put_of_a_stored_payload_sends_nothing(endpoint: str) -> None:
    made = archive(endpoint, "idempotent")
    data = b"the same bytes, twice" * 100
    sha = hashlib.sha256(data).hexdigest()
    puts = counting(made, "PutObject")
    made.put(sha, data)
    made.put(sha, data)
    made.put_many_located([(sha, data), (sha, data)])
    assert puts == [f"/payloads/{sha[:2]}/{sha}"]  # one PutObject, of that key


def test_a_payload_over_the_threshold_goes_in_parts_and_comes_back_exactly(endpoint: str) -> None:
    made = archive(endpoint, "multipart", multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB + 123)
    sha = hashlib.sha256(data).hexdigest()
    parts = counting(made, "UploadPart")
    made.put(sha, data)
    assert len(parts) == 3  # 5 MiB, 5 MiB, 2 MiB + 123 bytes
    head = raw_client(endpoint).head_object(Bucket="multipart", Key=f"payloads/{sha[:2]}/{sha}", ChecksumMode="ENABLED")
    digests = b"".join(hashlib.sha256(data[i:i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB))
    assert head["ChecksumSHA256"].split("-")[0] == b64sha(digests)  # S3's composite: the SHA-256 of the parts' ones
    assert head["Metadata"] == {"sha256": sha, "part-size": str(5 * MiB)}
    got = made.get(sha)
    assert len(got) == len(data) and hashlib.sha256(got).hexdigest() == sha
    made.put(sha, data)
    assert len(parts) == 3  # stored, with the composite of these parts: not sent again
    assert made.exists(sha)


def test_an_object_damaged_behind_the_archivers_back_is_a_named_error_and_put_repairs_it(endpoint: str) -> None:
    made = archive(endpoint, "damaged")
    data = b"original payload bytes" * 50
    sha = hashlib.sha256(data).hexdigest()
    key = f"payloads/{sha[:2]}/{sha}"
    made.put(sha, data)
    client = raw_client(endpoint)
    # Rot at rest: other bytes under the payload's key, the payload's checksum still recorded.
    client.put_object(Bucket="damaged", Key=key, Body=b"X" * len(data), ChecksumAlgorithm="SHA256",
                      ChecksumSHA256=b64sha(data))
    with pytest.raises(ArchiveDamaged, match=f"cannot read payload {sha} in the archive s3://damaged/payloads: "
                                             "the checksum does not match"):
        made.get(sha, verify=False)  # botocore checks the body against the stored checksum
    made.put(sha, data)  # HEAD says the checksum is right, the length too: a damaged body is found only by reading
    # Overwritten: other bytes and their own checksum (or none).
    client.put_object(Bucket="damaged", Key=key, Body=b"Y" * len(data))
    with pytest.raises(ArchiveDamaged, match=f"payload {sha} is damaged in the archive s3://damaged/payloads"):
        made.get(sha)
    assert not made.exists(sha)  # no checksum of the payload's
    made.put(sha, data)  # not the payload's checksum: stored again
    assert hashlib.sha256(made.get(sha)).hexdigest() == sha
    assert client.head_object(Bucket="damaged", Key=key, ChecksumMode="ENABLED")["ChecksumSHA256"] == b64sha(data)


def test_throttling_is_retried_with_backoff_up_to_max_attempts(endpoint: str) -> None:
    raw_client(endpoint).create_bucket(Bucket="throttled")
    data = b"sent through a throttling proxy"
    sha = hashlib.sha256(data).hexdigest()
    with flaky(endpoint, failures=2) as counts:
        made = open_archive("s3", "s3://throttled/p", {"endpoint_url": f"http://127.0.0.1:{counts['port']}",
                                                       "max_attempts": 3})
        made.put(sha, data)  # HEAD: 503, 503, then 404 from the server; then the PUT
        assert counts == {"refused": 2, "forwarded": 2, "port": counts["port"]}
    stored = raw_client(endpoint).get_object(Bucket="throttled", Key=f"p/{sha[:2]}/{sha}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == sha
    with flaky(endpoint, failures=2) as counts:
        once = open_archive("s3", "s3://throttled/p", {"endpoint_url": f"http://127.0.0.1:{counts['port']}",
                                                       "max_attempts": 2})
        with pytest.raises(ArchiveError, match=rf"cannot look up payload {sha} in the archive s3://throttled/p: "
                                             r"An error occurred \(503\) when calling the HeadObject operation \(reached max retries: 1\)"):
            once.exists(sha)
        assert counts["refused"] == 2 and counts["forwarded"] == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_down_is_a_named_error_not_a_crash(tmp_path: Path, endpoint: str) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    made = open_archive("s3", "s3://nowhere", {"endpoint_url": down, "max_attempts": 2, "connect_timeout": 1})
    with pytest.raises(ArchiveUnavailable, match="cannot open the bucket: cannot reach the archive s3://nowhere"):
        made.prepare()
    with pytest.raises(ArchiveUnavailable, match=f"cannot read payload {'a' * 64}: cannot reach the archive s3://nowhere"):
        made.get("a" * 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | CREDENTIALS | {
        "STOQ_ARCHIVER": "s3", "STOQ_ARCHIVE": "s3://nowhere", "STOQ_S3__ENDPOINT_URL": down,
        "STOQ_S3__MAX_ATTEMPTS": "1", "STOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'stoq.db'}"}
    got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", str(CORPUS / "test.txt"), "--no-store"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 4, got.stderr
    assert "cannot use the archive s3://nowhere: cannot open the bucket: cannot reach the archive" in got.stderr
    assert "Traceback" not in got.stderr
    # The server goes away during a scan: the analysis goes on, the archive's error is in the document.
    with s3_server() as short_lived:
        engine = Engine(Settings(archiver="s3", archive="s3://brief", plugins={"s3": {
            "endpoint_url": short_lived, "create_bucket": True, "max_attempts": 1, "connect_timeout": 1}}))
    doc = engine.scan(b"scanned while the archive is down", "down.txt", {})
    engine.close()
    (error,) = doc["errors"]
    sha = hashlib.sha256(b"scanned while the archive is down").hexdigest()
    assert (error["plugin"], error["kind"]) == ("archive", "error")
    assert error["message"].startswith(f"ArchiveUnavailable: cannot look up payload {sha}: cannot reach the archive s3://brief")
    assert doc["results"][0]["sha256"] == sha


def test_an_embedded_scan_archives_every_payload_in_the_bucket(tmp_path: Path, endpoint: str) -> None:
    raw_client(endpoint).create_bucket(Bucket="embedded")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | CREDENTIALS | {
        "STOQ_ARCHIVER": "s3", "STOQ_ARCHIVE": "s3://embedded/scan", "STOQ_S3__ENDPOINT_URL": endpoint,
        "STOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'stoq.db'}", "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data")}
    sample = CORPUS / "test.zip"
    got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", str(sample), "--format", "json",
                          "--jobs", "1"], env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    validate(doc)
    stored = {p["sha256"] for p in doc["results"] if p["duplicate_of"] is None}
    assert len(stored) > 1 and doc["results"][0]["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    client = raw_client(endpoint)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="embedded")["Contents"]}
    assert keys == {f"scan/{sha[:2]}/{sha}" for sha in stored}
    for sha in stored:
        body = client.get_object(Bucket="embedded", Key=f"scan/{sha[:2]}/{sha}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha
    assert not (tmp_path / "data" / "stoq" / "archive").exists()  # nothing archived locally


def test_the_location_must_be_an_s3_url() -> None:
    with pytest.raises(ArchiveError, match=r"archiver s3 needs the setting archive \(STOQ_ARCHIVE\) to be s3://BUCKET"):
        open_archive("s3", "/srv/archive").prepare()
