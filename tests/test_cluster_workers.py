"""The analysis workers of issue 14 on their own queues: a real `celery -A stoq worker -Q xorsearch` is
the only consumer of the `xorsearch` queue (the other worker serves every queue but that one), and the
submitted scan gets the same answer as the embedded one. Redis databases 6 and 7."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from helpers import CORPUS, validate
from test_cluster import dedicated_queue, normal, tasks_run

DB = "stoq_cluster_workers"


def test_xorsearch_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    pe = (CORPUS / "test.exe").read_bytes()
    sample = tmp_path / "encoded.bin"
    prefix = b"\x01\x02\x03 not base64, not text \x04" * 8
    sample.write_bytes(prefix + bytes((b + 77) % 256 for b in pe))  # ADD 77: no bundled dispatch rule finds it
    with dedicated_queue(tmp_path, testplugins_site, DB, "xorsearch") as workers:
        got = workers[0].stoq("submit", str(sample), "--workers", "xorsearch", "--format", "json", timeout=180)
        assert got.returncode == 0, got.stderr
        (doc,) = json.loads(got.stdout)
        validate(doc)
        root, child = doc["results"][0], doc["results"][1]
        assert root["workers"]["xorsearch"]["executables"] == [{"method": "add", "key": 77, "offset": len(prefix)}]
        assert child["sha256"] == hashlib.sha256(pe).hexdigest() and child["extracted_by"] == "xorsearch"
        assert "xorsearch" in child["workers"]
        # The dedicated worker ran xorsearch's two tasks (root and child); the other never received one.
        ran = tasks_run(workers[1])
        assert ran == ["stoq.worker.xorsearch"] * 2
        assert "stoq.worker.xorsearch" not in workers[0].log.read_text()
        assert "stoq.carver.trailer" in workers[0].log.read_text()  # the PE child's routed carvers ran there
        embedded = workers[0].stoq("scan", str(sample), "--workers", "xorsearch", "--format", "json", "--no-store",
                                   STOQ_BROKER_URL="", STOQ_ARCHIVE=str(tmp_path / "a"))
        assert embedded.returncode == 0, embedded.stderr
        assert normal(doc) == normal(json.loads(embedded.stdout)[0])
