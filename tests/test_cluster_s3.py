"""A real cluster whose client and worker share payloads only through S3 (moto's standalone server,
tests/s3server.py): the client archives the roots in the bucket, the worker reads them from there and
archives the children there; no directory archive exists. Each reaches S3 by its own endpoint. The mongodb connector runs as its task after
the store (against tests/mongowire.py). Redis databases 4 and 5, PostgreSQL database stoq_cluster_s3."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from helpers import BENCH_RULES, CORPUS, database, pg_admin, validate
from mongowire import MongoWireServer
from s3server import CREDENTIALS, flaky, raw_client, s3_server
from sqlalchemy import text
from test_cluster import cluster_env, fresh_database, jsonl, normal, start, tasks_run

DB = "stoq_cluster_s3"


def test_client_and_worker_share_payloads_only_through_s3(tmp_path: Path, testplugins_site: Path) -> None:
    fresh_database(DB)
    with s3_server() as endpoint, MongoWireServer() as mongo:
        raw_client(endpoint).create_bucket(Bucket="stoq-cluster")
        env = cluster_env(tmp_path, testplugins_site, (4, 5), DB) | CREDENTIALS | {
            "STOQ_ARCHIVER": "s3", "STOQ_ARCHIVE": "s3://stoq-cluster/payloads", "STOQ_S3__ENDPOINT_URL": endpoint,
            "STOQ_MONGODB__URL": f"{mongo.url}/cluster"}
        upgraded = subprocess.run([str(Path(sys.executable).parent / "stoq"), "db", "upgrade"], env=env,
                                  capture_output=True)
        assert upgraded.returncode == 0, upgraded.stderr
        c = start(tmp_path, env, "-c", "2")
        try:
            args = ["--workers", "yara", "-o", f"yara.rules={BENCH_RULES}", "--format", "jsonl"]
            files = [str(CORPUS / name) for name in ("test.zip", "test.exe", "test.gz")]
            with flaky(endpoint, failures=0) as via:  # the client's own way to the server: a counting proxy
                got = c.stoq("submit", *files, *args, "--connectors", "mongodb", timeout=180,
                             STOQ_S3__ENDPOINT_URL=f"http://127.0.0.1:{via['port']}")
            assert got.returncode == 0, got.stderr
            # The client's requests only: HEAD of the bucket, then HEAD and PUT of each root. The workers
            # use their own endpoint, not the one in the submission's profile.
            assert via["forwarded"] == 1 + 2 * len(files)
            embedded = c.stoq("scan", *files, *args, "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVER="pack",
                              STOQ_ARCHIVE=str(tmp_path / "local"))
            remote, local = jsonl(got.stdout), jsonl(embedded.stdout)
            assert sorted(remote) == sorted(files)
            for path in files:
                validate(remote[path])
                assert normal(remote[path]) == normal(local[path]), path
            stored = {p["sha256"] for d in remote.values() for p in d["results"] if p["duplicate_of"] is None}
            assert len(stored) > len(files)  # children went through S3 too
            client = raw_client(endpoint)
            keys = {o["Key"] for o in client.list_objects_v2(Bucket="stoq-cluster")["Contents"]}
            assert keys == {f"payloads/{sha[:2]}/{sha}" for sha in stored}
            for sha in stored:
                body = client.get_object(Bucket="stoq-cluster", Key=f"payloads/{sha[:2]}/{sha}")["Body"].read()
                assert hashlib.sha256(body).hexdigest() == sha
            assert not (tmp_path / "archive").exists()  # the directory STOQ_ARCHIVE would have been
            deadline = time.monotonic() + 60  # the connector's task runs after the store, maybe after the answer
            while len(scans := mongo.store.coll("cluster", "scans").docs) < len(files):
                assert time.monotonic() < deadline, "the mongodb connector did not deliver"
                time.sleep(0.2)
            assert {doc["_id"] for doc in scans.values()} == {d["scan_id"] for d in remote.values()}
            assert "stoq.connector.mongodb" in tasks_run(c)
        finally:
            c.stop()
            with pg_admin().connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database(DB)}" WITH (FORCE)'))

