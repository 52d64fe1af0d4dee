"""A slow outside service holds back only its own queue: real workers, the general one (`-X vtmis`,
one process) and a vtmis one (`-Q vtmis`), with a fake VirusTotal that answers each request in 5 s. Every
local plugin task of the submission has succeeded before the fake service sent its first answer.
Redis databases 6 and 7."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path

from helpers import validate
from intelfake import FakeService, reply
from test_cluster import dedicated_queue, tasks_run

DB = "stoq_cluster_intel"
DELAY = 5.0


def succeeded_at(log: Path) -> list[tuple[str, float]]:
    """(task name, time) of each task the worker's log says succeeded."""
    found = re.findall(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/[^\]]*\] Task (stoq\.[a-z]+\.[a-z0-9_-]+)"
                       r"\[[0-9a-f-]+\] succeeded", log.read_text())
    return [(name, datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp()) for when, name in found]


def test_local_plugins_finish_before_the_slow_service_answers(tmp_path: Path, testplugins_site: Path) -> None:
    files = []
    for i in range(2):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(f"payload {i}\n".encode() * 50)
    shas = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    routes = {("GET", f"/api/v3/files/{sha}"): reply(200, {"data": {"type": "file", "id": sha, "attributes": {
        "last_analysis_stats": {"malicious": 0, "undetected": 70}}}}) for sha in shas}
    with FakeService(routes, delay=DELAY) as fake, dedicated_queue(tmp_path, testplugins_site, DB, "vtmis") as workers:
        got = workers[0].stoq("submit", *map(str, files), "--workers", "hash,entropy,vtmis", "--format", "json",
                              "-o", f"vtmis.url={fake.url}", "-o", "vtmis.api_key=cluster-key", "-o", "vtmis.rate=",
                              timeout=180)
        assert got.returncode == 0, got.stderr
        docs = json.loads(got.stdout)
        general, intel = succeeded_at(workers[0].log), succeeded_at(workers[1].log)
        assert tasks_run(workers[1]) == ["stoq.worker.vtmis"] * 2
    for doc, sha in zip(docs, shas):
        validate(doc)
        assert doc["results"][0]["workers"]["vtmis"] == {"file": {"found": True, "id": sha, "last_analysis_stats": {
            "malicious": 0, "undetected": 70}}}
        assert {"hash", "entropy"} <= set(doc["results"][0]["workers"])
    assert sorted(fake.requests()) == sorted(("GET", f"/api/v3/files/{sha}") for sha in shas)
    assert all(s.headers["x-apikey"] == "cluster-key" for s in fake.seen)
    local = [at for name, at in general if name in ("stoq.worker.hash", "stoq.worker.entropy")]
    assert len(local) == 4
    first_answer = min(s.at for s in fake.seen) + DELAY
    # every local result was in before the service's first answer left it, and before vtmis finished
    assert max(local) < first_answer <= min(at for _, at in intel) + 0.01
    assert "cluster-key" not in workers[0].log.read_text() + workers[1].log.read_text()
