"""The example plugin on its own queue, as docs/plugin-development.md tells an author to run one: a real
`celery -A stoq worker -Q basicworker` is the only consumer of the `basicworker` queue (the other worker
serves every queue but that one), and the submitted scan gets the embedded scan's answer. Redis
databases 6 and 7."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from sqlalchemy import text

from helpers import CORPUS, pg_admin, validate
from test_cluster import BIN, cluster_env, fresh_database, normal, start

DB = "stoq_cluster_basicworker"


def test_basicworker_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    sample = CORPUS / "test.txt"
    content = sample.read_bytes()
    fresh_database(DB)
    env = cluster_env(tmp_path, testplugins_site, (6, 7), DB)
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    homes = [tmp_path / "general", tmp_path / "basicworker"]
    for home in homes:
        home.mkdir()
    workers = [start(homes[0], env, "-c", "1", "-X", "basicworker"),
               start(homes[1], env, "-c", "1", "-Q", "basicworker", fresh=False)]
    try:
        got = workers[0].stoq("submit", str(sample), "--workers", "basicworker", "-o", "basicworker.head_bytes=4",
                              "--format", "json", timeout=180)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        assert doc["results"][0]["workers"]["basicworker"] == {
            "size": len(content), "lines": content.count(b"\n"), "nul_bytes": content.count(b"\0"),
            "printable": sum(1 for b in content if 0x20 <= b <= 0x7e or b in (9, 10, 13)), "head": content[:4].hex()}
        ran = re.findall(r"Task (stoq\.[a-z]+\.[a-z0-9_-]+)\[[0-9a-f-]+\] succeeded", workers[1].log.read_text())
        assert ran == ["stoq.worker.basicworker"]
        assert "stoq.worker.basicworker" not in workers[0].log.read_text()
        embedded = workers[0].stoq("scan", str(sample), "--workers", "basicworker", "-o", "basicworker.head_bytes=4",
                                   "--format", "json", "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert embedded.returncode == 0, embedded.stderr
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
    finally:
        for worker in workers:
            worker.stop()
        with pg_admin().connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
