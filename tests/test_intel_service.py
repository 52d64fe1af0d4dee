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
from helpers import redis_url
from intelfake import FakeService, reply

REDIS = redis_url(4)

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


@pytest.mark.parametrize("status", [200, 401])
def test_the_key_from_the_environment_never_reaches_output_logs_or_store(tmp_path: Path, status: int) -> None:
    """`stoq -vv scan` (embedded, SQLite store) with STOQ_VTMIS__API_KEY: the key reaches the fake
    service's header, and nothing else: not stdout, not stderr's logs, not the stored document."""
    key = "vt-env-key-5e3b1c9d"
    sample = tmp_path / "sample.txt"
    sample.write_bytes(b"contact http://bad.example.com/gate.php now\n")
    sha = hashlib.sha256(sample.read_bytes()).hexdigest()
    answer = {"data": {"type": "file", "id": sha, "attributes": {"reputation": 2}}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update(STOQ_VTMIS__API_KEY=key, XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HOME=str(tmp_path))
    with FakeService({("GET", f"/api/v3/files/{sha}"): reply(status, answer if status == 200 else {})}) as fake:
        got = subprocess.run([str(Path(sys.executable).parent / "stoq"), "-vv", "scan", str(sample), "--workers",
                              "vtmis", "-o", f"vtmis.url={fake.url}", "--format", "json"],
                             env=env, capture_output=True, timeout=120)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    vt = doc["results"][0]["workers"]["vtmis"]
    if status == 200:
        assert vt["file"] == {"found": True, "id": sha, "reputation": 2} and len(vt["indicators"]) == 2
    else:
        assert vt == {"error": "intel:unauthorised"} and "intel:unauthorised" in doc["results"][0]["flags"]
    assert {s.headers["x-apikey"] for s in fake.seen} == {key}
    assert key.encode() not in got.stdout + got.stderr
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert b"intel:unauthorised" in stored if status == 401 else b"reputation" in stored  # the document is stored ...
    assert key.encode() not in stored  # ... without the key
