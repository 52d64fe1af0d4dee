"""The example plugin on its own queue, as docs/plugin-development.md tells an author to run one: a real
`celery -A stoq worker -Q basicworker` is the only consumer of the `basicworker` queue (the other worker
serves every queue but that one), and the submitted scan gets the embedded scan's answer. Redis
databases 6 and 7."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import CORPUS, validate
from test_cluster import dedicated_queue, normal, tasks_run

DB = "stoq_cluster_basicworker"


def test_basicworker_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    sample = CORPUS / "test.txt"
    content = sample.read_bytes()
    with dedicated_queue(tmp_path, testplugins_site, DB, "basicworker") as workers:
        got = workers[0].stoq("submit", str(sample), "--workers", "basicworker", "-o", "basicworker.head_bytes=4",
                              "--format", "json", timeout=180)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        assert doc["results"][0]["workers"]["basicworker"] == {
            "size": len(content), "lines": content.count(b"\n"), "nul_bytes": content.count(b"\0"),
            "printable": sum(1 for b in content if 0x20 <= b <= 0x7e or b in (9, 10, 13)), "head": content[:4].hex()}
        ran = tasks_run(workers[1])
        assert ran == ["stoq.worker.basicworker"]
        assert "stoq.worker.basicworker" not in workers[0].log.read_text()
        embedded = workers[0].stoq("scan", str(sample), "--workers", "basicworker", "-o", "basicworker.head_bytes=4",
                                   "--format", "json", "--no-store", STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert embedded.returncode == 0, embedded.stderr
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
