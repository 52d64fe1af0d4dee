"""The intelligence plugins' shared rate limit and cache across real processes: two (and four) Python
processes run the vtmis plugin against one fake VirusTotal; the fake server counts what reaches it.
With Redis (database 4) as in a cluster, and with the SQLite file of one machine (embedded)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from intelfake import FakeService, reply

REDIS = "redis://127.0.0.1:6379/4"

SCRIPT = """
import hashlib, json, sys
from stoq.plugin import Payload
from stoq_plugins.vtmis import VtmisPlugin
url, backend, rate, wait, names = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
options = VtmisPlugin.Options(url=url, api_key="k", rate=rate, max_rate_wait=wait, redis_url=backend, retries=0)
plugin = VtmisPlugin()
flags = []
for name in names:
    content = name.encode()
    payload = Payload(content, "id", None, "application/octet-stream", hashlib.sha256(content).hexdigest(), 0)
    flags.append(plugin.scan(payload, options).flags)
print(json.dumps(flags))
"""


@pytest.fixture(params=["redis", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        r = redis.Redis.from_url(REDIS)
        for key in r.scan_iter("stoq:intel:*"):
            r.delete(key)
        return REDIS
    return "none"


def run(fake: FakeService, backend: str, tmp_path: Path, rate: str, wait: float, *groups: list[str]) -> list[Any]:
    """Starts one process per group of file contents at once; returns each one's flags per file."""
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("STOQ_RESULT_BACKEND", None)
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, fake.url, backend, rate, str(wait), *names],
                              stdout=subprocess.PIPE, env=env) for names in groups]
    return [json.loads(p.communicate(timeout=120)[0]) for p in procs]


def test_the_quota_holds_across_processes(backend: str, tmp_path: Path) -> None:
    with FakeService({}) as fake:  # every file unknown: 404
        got = run(fake, backend, tmp_path, "3/minute", 0.5, ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"])
    assert len(fake.seen) == 3  # 8 files, 2 processes, a quota of 3 a minute: exactly 3 requests
    flat = [f for flags in got for f in flags]
    assert flat.count([]) == 3 and flat.count(["intel:rate-limited"]) == 5


def test_a_window_is_waited_for_not_exceeded(backend: str, tmp_path: Path) -> None:
    with FakeService({}) as fake:
        got = run(fake, backend, tmp_path, "2/2s", 30, ["c1", "c2", "c3"], ["d1", "d2", "d3"])
    assert got == [[[], [], []], [[], [], []]] and len(fake.seen) == 6
    at = sorted(s.at for s in fake.seen)
    # any 3 consecutive requests span at least the window (less the requests' travel on loopback)
    assert all(at[i + 2] - at[i] >= 1.75 for i in range(4)), at


def test_a_file_seen_twice_by_two_processes_costs_one_request(backend: str, tmp_path: Path) -> None:
    sha = hashlib.sha256(b"same").hexdigest()
    answer = {"data": {"type": "file", "id": sha, "attributes": {"reputation": 0}}}
    with FakeService({("GET", f"/api/v3/files/{sha}"): reply(200, answer)}) as fake:
        run(fake, backend, tmp_path, "", 0, ["same"])
        assert run(fake, backend, tmp_path, "", 0, ["same"], ["same"]) == [[[]], [[]]]
    assert fake.requests() == [("GET", f"/api/v3/files/{sha}")]
