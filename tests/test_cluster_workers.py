"""The analysis workers of issue 14 on their own queues: a real `celery -A stoq worker -Q xorsearch` is
the only consumer of the `xorsearch` queue (the other worker serves every queue but that one), and the
submitted scan gets the same answer as the embedded one. Redis databases 6 and 7."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

from sqlalchemy import text

from helpers import CORPUS, pg_admin, validate
from test_cluster import BIN, cluster_env, fresh_database, normal, start

DB = "stoq_cluster_workers"


def test_xorsearch_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    pe = (CORPUS / "test.exe").read_bytes()
    sample = tmp_path / "encoded.bin"
    prefix = b"\x01\x02\x03 not base64, not text \x04" * 8
    sample.write_bytes(prefix + bytes((b + 77) % 256 for b in pe))  # ADD 77: no bundled dispatch rule finds it
    fresh_database(DB)
    env = cluster_env(tmp_path, testplugins_site, (6, 7), DB)
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    homes = [tmp_path / "general", tmp_path / "xorsearch"]
    for home in homes:
        home.mkdir()
    workers = [start(homes[0], env, "-c", "1", "-X", "xorsearch"),
               start(homes[1], env, "-c", "1", "-Q", "xorsearch", fresh=False)]
    try:
        got = workers[0].stoq("submit", str(sample), "--workers", "xorsearch", "--format", "json", timeout=180)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        root, child = doc["results"][0], doc["results"][1]
        assert root["workers"]["xorsearch"]["executables"] == [{"method": "add", "key": 77, "offset": len(prefix)}]
        assert child["sha256"] == hashlib.sha256(pe).hexdigest() and child["extracted_by"] == "xorsearch"
        assert "xorsearch" in child["workers"]
        # The dedicated worker ran xorsearch's two tasks (root and child); the other never received one.
        ran = re.findall(r"Task (stoq\.[a-z]+\.[a-z0-9_-]+)\[[0-9a-f-]+\] succeeded", workers[1].log.read_text())
        assert ran == ["stoq.worker.xorsearch"] * 2
        assert "stoq.worker.xorsearch" not in workers[0].log.read_text()
        assert "stoq.carver.trailer" in workers[0].log.read_text()  # the PE child's routed carvers ran there
        embedded = workers[0].stoq("scan", str(sample), "--workers", "xorsearch", "--format", "json", "--no-store",
                                   STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert embedded.returncode == 0, embedded.stderr
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
    finally:
        for worker in workers:
            worker.stop()
        with pg_admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
