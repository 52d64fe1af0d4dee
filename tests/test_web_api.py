"""The REST API (`stoq serve`, docs/web.md) over real HTTP against a real server process: embedded mode
on SQLite, and one submission through a real cluster (Celery worker, Redis, PostgreSQL)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from helpers import CORPUS, ROOT, make_zip
from stoq.lifetime import preexec
from test_cluster import cluster_env, fresh_database, normal, start

BIN = Path(sys.executable).parent
PE = CORPUS / "test.exe"
MARKER = b"stoq-web-api-marker"
RULE = 'rule web_api_marker { strings: $a = "stoq-web-api-marker" condition: $a }\n'
WORKERS = "yara,peinfo,hash"
MAX_UPLOAD = 1024 * 1024
RATE = 120  # requests per minute per token


class Server:
    """A running `stoq serve` and what a client needs to reach it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, env: dict[str, str], work: Path, log: Path) -> None:
        self.proc, self.url, self.env, self.work, self.log = proc, url, env, work, log

    def stoq(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / "stoq"), *args], env=self.env, cwd=self.work, capture_output=True, timeout=120)

    def token(self, name: str | None = None) -> str:
        made = self.stoq("tokens", "create", name or f"t-{uuid.uuid4().hex[:8]}")
        assert made.returncode == 0, made.stderr
        return made.stdout.decode().strip()

    def get(self, path: str, token: str | None, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=30, **kw)

    def post(self, path: str, token: str | None, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.post(self.url + path, headers=headers, timeout=30, **kw)

    def finished(self, scan_id: str, token: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            answer = self.get(f"/api/scans/{scan_id}", token)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            if body["state"] != "pending":
                return body
            assert time.monotonic() < deadline, f"scan {scan_id} still pending; server log:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def serve(work: Path, env: dict[str, str], *args: str) -> Server:
    """`stoq serve --port 0` in ``work``; returns once it says where it listens."""
    log = work / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(BIN / "stoq"), "serve", "--port", "0", *args], env=env, cwd=work,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=preexec())  # dies with pytest, even one killed by a timeout
    deadline = time.monotonic() + 30
    while not (found := re.search(r"serving the API on (http://\S+) ", log.read_text())):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "stoq serve did not start"
        time.sleep(0.05)
    return Server(proc, found[1], env, work, log)


def private_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") or k in ("STOQ_TOOL_PATH", "STOQDEV_DEFAULT_WORKERS")}
    env.update(HOME=str(work / "home"), XDG_DATA_HOME=str(work / "data"), XDG_CONFIG_HOME=str(work / "config"),
               STOQ_ARCHIVE=str(work / "archive"), STOQ_DATABASE_URL=f"sqlite:///{work / 'stoq.db'}",
               STOQ_WEB_MAX_UPLOAD=str(MAX_UPLOAD), STOQ_WEB_RATE_LIMIT=str(RATE), TMPDIR=str(work / "tmp"))
    (work / "tmp").mkdir(exist_ok=True)  # uploads are spooled there
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("web")
    (work / "rule.yar").write_text(RULE)
    running = serve(work, private_env(work))
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 143, running.log.read_text()  # SIGTERM, after a clean shutdown


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    return server.token("tests")


@pytest.fixture(scope="module")
def built_zip() -> tuple[bytes, dict[str, bytes]]:
    members = {f"note-{uuid.uuid4().hex[:12]}.txt": b"hello " + MARKER + b"\n", "tool.exe": PE.read_bytes()}
    return make_zip(members), members


@pytest.fixture(scope="module")
def submitted(server: Server, token: str, built_zip: tuple[bytes, dict[str, bytes]]) -> dict[str, Any]:
    """One submission of two files (the corpus PE and the zip built here), answered at once."""
    data, _ = built_zip
    answer = server.post("/api/scans", token, files=[("file", ("test.exe", PE.read_bytes())),
                                                      ("file", ("dir/built.zip", data))],
                         data={"workers": WORKERS, "option": f"yara.rules={server.work / 'rule.yar'}",
                               "meta": ["case=42", "tlp=AMBER"]})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    first = server.get(f"/api/scans/{body['scans'][0]['scan_id']}", token).json()
    return body | {"first_state": first["state"]}


def test_a_submission_answers_at_once_with_pending_scans(submitted: dict[str, Any], built_zip: tuple[bytes, Any]) -> None:
    assert submitted["mode"] == "embedded"
    assert [(s["filename"], s["sha256"], s["size"]) for s in submitted["scans"]] == [
        ("test.exe", hashlib.sha256(PE.read_bytes()).hexdigest(), PE.stat().st_size),
        ("built.zip", hashlib.sha256(built_zip[0]).hexdigest(), len(built_zip[0]))]
    assert submitted["first_state"] == "pending"  # the scanning process takes longer than one GET


def test_the_document_is_the_one_stoq_scan_makes(server: Server, token: str, submitted: dict[str, Any],
                                                 tmp_path: Path) -> None:
    pe_scan = server.finished(submitted["scans"][0]["scan_id"], token)
    assert pe_scan["state"] == "finished" and pe_scan["finished_at"] and pe_scan["submitted_at"]
    doc = pe_scan["document"]
    assert doc["scan_id"] == submitted["scans"][0]["scan_id"]
    assert doc["source"] == {"path": "test.exe", "meta": {"case": "42", "tlp": "amber"}}
    content = PE.read_bytes()
    root = doc["results"][0]
    assert (root["sha256"], root["md5"], root["size"]) == (hashlib.sha256(content).hexdigest(),
                                                            hashlib.md5(content).hexdigest(), len(content))
    shutil.copy(PE, tmp_path / "test.exe")
    cli = server.stoq("scan", str(tmp_path / "test.exe"), "--workers", WORKERS, "-o",
                      f"yara.rules={server.work / 'rule.yar'}", "--meta", "case=42", "--meta", "tlp=amber", "--no-store")
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert list(doc["results"][0]["workers"]) == ["yara", "peinfo", "hash", "trailer"]
    assert normal(doc) | {"source": None} == normal(expected) | {"source": None}


def test_the_tree_shows_the_children_and_the_yara_hit(server: Server, token: str, submitted: dict[str, Any],
                                                      built_zip: tuple[bytes, dict[str, bytes]]) -> None:
    scan_id = submitted["scans"][1]["scan_id"]
    assert server.finished(scan_id, token)["state"] == "finished"
    answer = server.get(f"/api/scans/{scan_id}/tree", token)
    assert answer.status_code == 200 and answer.headers["x-content-type-options"] == "nosniff"
    tree = answer.json()
    root = tree["root"]
    data, members = built_zip
    assert (root["filename"], root["sha256"], root["depth"]) == ("built.zip", hashlib.sha256(data).hexdigest(), 0)
    children = {c["filename"]: c for c in root["children"]}
    assert {name: c["sha256"] for name, c in children.items()} == {
        name: hashlib.sha256(body).hexdigest() for name, body in members.items()}
    assert all(c["extracted_by"] == "decompress" and c["depth"] == 1 for c in children.values())
    note = next(name for name in members if name.startswith("note-"))
    doc = server.get(f"/api/scans/{scan_id}", token).json()["document"]
    by_sha = {p["sha256"]: p for p in doc["results"]}
    assert by_sha[children[note]["sha256"]]["workers"]["yara"]["matches"][0]["rule"] == "web_api_marker"
    assert children["tool.exe"]["plugins"] == ["yara", "peinfo", "hash", "trailer"]
    assert tree["payloads"] == len(doc["results"]) == 3


def test_search_by_sha256_and_paging(server: Server, token: str, submitted: dict[str, Any],
                                     built_zip: tuple[bytes, dict[str, bytes]]) -> None:
    ids = [s["scan_id"] for s in submitted["scans"]]
    for scan_id in ids:
        server.finished(scan_id, token)
    note = next(name for name in built_zip[1] if name.startswith("note-"))
    found = server.get("/api/search", token, params={"filename": note, "yara": "web_api_marker"}).json()
    assert [s["scan_id"] for s in found["scans"]] == [ids[1]] and found["next_offset"] is None
    assert server.get("/api/search", token, params={"yara": "no_such_rule"}).json()["scans"] == []
    pe_sha = hashlib.sha256(PE.read_bytes()).hexdigest()
    by_sha = server.get("/api/scans", token, params={"sha256": pe_sha}).json()
    # the PE is the root of one scan and a child of the other (newest first: the zip finished later or
    # at the same time; compare as a mapping)
    assert {s["scan_id"]: s["depths"] for s in by_sha["scans"]} == {ids[0]: [0], ids[1]: [1]}
    assert by_sha["pending"] == []
    same = server.get(f"/api/files/{pe_sha.upper()}/scans", token).json()
    assert same["scans"] == by_sha["scans"]
    everything = server.get("/api/search", token, params={"since": "1h", "limit": 100}).json()["scans"]
    first = server.get("/api/search", token, params={"since": "1h", "limit": 1}).json()
    second = server.get("/api/search", token, params={"since": "1h", "limit": 1, "offset": first["next_offset"]}).json()
    assert first["next_offset"] == 1
    assert [s["scan_id"] for s in first["scans"] + second["scans"]] == [s["scan_id"] for s in everything[:2]]
    bad = server.get("/api/search", token, params={"since": "yesterday"})
    assert bad.status_code == 400 and "yesterday" in bad.json()["detail"]


@pytest.mark.tools("7z")
def test_a_download_is_a_zip_with_the_password_infected(server: Server, token: str, submitted: dict[str, Any],
                                                        tmp_path: Path) -> None:
    server.finished(submitted["scans"][0]["scan_id"], token)
    content = PE.read_bytes()
    sha = hashlib.sha256(content).hexdigest()
    answer = server.get(f"/api/payloads/{sha}/download", token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert content not in answer.content  # never raw
    with zipfile.ZipFile(io.BytesIO(answer.content)) as listing:  # the standard library reads the listing
        assert [(i.filename, i.flag_bits & 1) for i in listing.infolist()] == [(sha, 1)]  # encrypted
    (tmp_path / "p.zip").write_bytes(answer.content)
    wrong = subprocess.run(["7z", "x", "-pwrong", "-so", str(tmp_path / "p.zip")], capture_output=True)
    assert wrong.returncode != 0
    out = subprocess.run(["7z", "x", "-pinfected", "-so", str(tmp_path / "p.zip")], capture_output=True)
    assert out.returncode == 0, out.stderr
    assert hashlib.sha256(out.stdout).hexdigest() == sha
    assert server.get(f"/api/payloads/{'0' * 64}/download", token).status_code == 404
    assert server.get("/api/payloads/not-a-sha/download", token).status_code == 400


def test_no_token_a_wrong_one_and_a_revoked_one_are_refused(server: Server) -> None:
    secret = server.token("revokable")
    assert server.get("/api/scans", secret).status_code == 200
    missing = server.get("/api/scans", None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert server.get("/openapi.json", None).status_code == 401  # every route, the schema too
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # a websocket too
    conn.request("GET", "/api/anything", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                  "Sec-WebSocket-Version": "13"})
    assert conn.getresponse().status == 403
    conn.close()
    assert server.get("/api/scans", secret[:-2] + "xx").status_code == 401
    assert requests.get(server.url + "/api/scans", headers={"Authorization": "Basic " + secret}).status_code == 401
    assert server.stoq("tokens", "create", "revokable").returncode == 2  # a live name is not reused
    listed = json.loads(server.stoq("tokens", "list", "--format", "json").stdout)
    assert secret not in json.dumps(listed) and "revokable" in [t["name"] for t in listed]
    revoked = server.stoq("tokens", "revoke", "revokable")
    assert revoked.returncode == 0, revoked.stderr
    assert server.get("/api/scans", secret).status_code == 401
    assert server.stoq("tokens", "revoke", "revokable").returncode == 6  # none live any more
    # only the hash is stored
    import sqlite3

    rows = sqlite3.connect(server.work / "stoq.db").execute("SELECT token_sha256 FROM api_tokens").fetchall()
    assert (hashlib.sha256(secret.encode()).hexdigest(),) in rows and all(secret not in r[0] for r in rows)


def test_over_the_rate_limit_a_token_waits(server: Server) -> None:
    secret = server.token()
    other = server.token()
    began = time.monotonic()
    passed = 0
    while (answer := server.get("/api/scans?limit=1", secret)).status_code == 200:
        passed += 1
        assert passed <= 2 * RATE
    elapsed = time.monotonic() - began
    # a full bucket of RATE, and what it refilled meanwhile (RATE per minute)
    assert RATE <= passed <= RATE + int(elapsed * RATE / 60) + 1
    assert answer.status_code == 429 and answer.headers["retry-after"] == "1"  # 1 more every 0.5 s
    assert server.get("/api/scans?limit=1", other).status_code == 200  # per token
    time.sleep(1.0)
    assert server.get("/api/scans?limit=1", secret).status_code == 200


def test_a_body_over_the_cap_is_refused(server: Server, token: str) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    # Content-Length over the cap: refused before the body is sent (as curl's Expect: 100-continue)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/scans")
    for key, value in {"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=x",
                       "Content-Length": str(MAX_UPLOAD + 1), "Expect": "100-continue"}.items():
        conn.putheader(key, value)
    conn.endheaders()
    answer = conn.getresponse()
    assert answer.status == 413 and b"web_max_upload" in answer.read()
    conn.close()
    # no Content-Length (chunked): refused once the streamed body passes the cap
    big = b"A" * (MAX_UPLOAD + 1)
    body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big\"\r\n\r\n" + big + b"\r\n--x--\r\n"
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/scans", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=x"},
                 encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 413 and b"web_max_upload" in answer.read()
    conn.close()
    # just under the cap: accepted
    small = server.post("/api/scans", token, files={"file": ("small.bin", b"B" * (MAX_UPLOAD - 1024))},
                        data={"workers": "none"})
    assert small.status_code == 202, small.text


def test_bad_submissions_are_400_and_unknown_scans_404(server: Server, token: str) -> None:
    files = {"file": ("x.txt", b"x")}
    unknown = server.post("/api/scans", token, files=files, data={"option": "nosuch.rules=/x"})
    assert unknown.status_code == 400 and "nosuch" in unknown.json()["detail"]
    option = server.post("/api/scans", token, files=files, data={"option": "yara.rulez=/x"})
    assert option.status_code == 400 and "plugin 'yara' has no option 'rulez' (did you mean 'rules'?)" in option.json()["detail"]
    meta = server.post("/api/scans", token, files=files, data={"meta": "Bad Key=1"})
    assert meta.status_code == 400 and "meta key" in meta.json()["detail"]
    assert server.post("/api/scans", token, files=files, data={"meta": "tlp=purple"}).status_code == 400
    assert server.post("/api/scans", token, data={"workers": "none"}).status_code == 422  # no file
    assert server.get("/api/scans/no-such-scan", token).status_code == 404
    assert server.get("/api/scans/no-such-scan/tree", token).status_code == 404


def test_a_scan_that_cannot_run_fails_with_why(server: Server, token: str) -> None:
    answer = server.post("/api/scans", token, files={"file": ("x.txt", b"x")},
                         data={"workers": "yara", "option": f"yara.rules={server.work / 'missing.yar'}"})
    assert answer.status_code == 202
    scan_id = answer.json()["scans"][0]["scan_id"]
    failed = server.finished(scan_id, token)
    assert failed["state"] == "failed" and "missing.yar" in failed["error"] and failed["document"] is None
    assert server.get(f"/api/scans/{scan_id}/tree", token).status_code == 409


def test_the_committed_openapi_schema_is_the_served_one(server: Server, token: str) -> None:
    served = server.get("/openapi.json", token).json()
    assert json.loads((ROOT / "docs" / "openapi.json").read_text()) == served, \
        "regenerate: .venv/bin/python -m stoq.web.app openapi > docs/openapi.json"


def ledger_row(work: Path, scan_id: str) -> tuple[str, str | None]:
    import sqlite3

    db = sqlite3.connect(work / "stoq.db")
    try:
        return db.execute("SELECT state, error FROM scan_ledger WHERE scan_id = ?", (scan_id,)).fetchone()
    finally:
        db.close()


def test_no_auth_only_on_loopback_and_scans_a_stopped_server_leaves_fail(tmp_path: Path, testplugins_site: Path) -> None:
    env = private_env(tmp_path) | {"PYTHONPATH": str(testplugins_site)}
    refused = subprocess.run([str(BIN / "stoq"), "serve", "--host", "0.0.0.0", "--no-auth"], env=env,
                             capture_output=True, timeout=60)
    assert refused.returncode == 2 and b"--no-auth is refused on 0.0.0.0" in refused.stderr

    def sleeping_scan(front: Server) -> str:
        answer = front.post("/api/scans", None, files={"file": ("s.txt", b"SLEEP")}, data={"workers": "sleeper"})
        assert answer.status_code == 202, answer.text
        return answer.json()["scans"][0]["scan_id"]

    local = serve(tmp_path, env, "--no-auth")
    killed = sleeping_scan(local)  # no token needed
    time.sleep(0.3)
    local.proc.kill()  # SIGKILL: nothing settles the scan; its scanning process dies with the server
    local.proc.wait()
    assert ledger_row(tmp_path, killed) == ("pending", None)
    local = serve(tmp_path, env, "--no-auth")  # the next start fails it
    try:
        assert ledger_row(tmp_path, killed) == ("failed", "the server stopped before the scan finished")
        assert local.get(f"/api/scans/{killed}", None).json()["state"] == "failed"
        stopped = sleeping_scan(local)
        time.sleep(0.3)
    finally:
        assert local.stop() == 143  # SIGTERM: a clean shutdown, which stops the scan
    assert ledger_row(tmp_path, stopped) == ("failed", "the server stopped before the scan finished")


def test_a_submission_through_the_cluster(tmp_path: Path, testplugins_site: Path, server: Server, token: str,
                                          submitted: dict[str, Any]) -> None:
    """Submitted through the ledger and the broker to a real worker; read from PostgreSQL; the same
    document as embedded."""
    embedded = server.finished(submitted["scans"][0]["scan_id"], token)["document"]
    fresh_database("stoq_web")
    env = cluster_env(tmp_path, testplugins_site, (8, 9), "stoq_web")
    env.pop("STOQ_MEASURE_MESSAGES", None)
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    worker = start(tmp_path, env, "-c", "1")
    front = serve(tmp_path, env)
    try:
        secret = front.token("cluster")
        answer = front.post("/api/scans", secret, files={"file": ("test.exe", PE.read_bytes())},
                            data={"workers": WORKERS, "option": f"yara.rules={server.work / 'rule.yar'}",
                                  "meta": ["case=42", "tlp=amber"]})
        assert answer.status_code == 202, answer.text
        assert answer.json()["mode"] == "cluster"
        done = front.finished(answer.json()["scans"][0]["scan_id"], secret)
        assert done["state"] == "finished", done
        assert normal(done["document"]) == normal(embedded)
        zipped = front.get(f"/api/payloads/{hashlib.sha256(PE.read_bytes()).hexdigest()}/download", secret)
        assert zipped.status_code == 200
    finally:
        front.stop()
        worker.stop()


def test_a_client_file_name_is_data(server: Server, token: str) -> None:
    """Only the last component of a client's file name is kept, and it comes back as JSON data."""
    name = "..\\..\\x/<b onmouseover=alert(1)>.txt"
    answer = server.post("/api/scans", token, files={"file": (name, b"plain text\n")}, data={"workers": "none"})
    assert answer.status_code == 202, answer.text
    scan_id = answer.json()["scans"][0]["scan_id"]
    assert answer.json()["scans"][0]["filename"] == "<b onmouseover=alert(1)>.txt"
    done = server.finished(scan_id, token)
    assert done["document"]["results"][0]["filename"] == "<b onmouseover=alert(1)>.txt"
    raw = server.get(f"/api/scans/{scan_id}", token)
    assert raw.headers["content-type"] == "application/json" and raw.headers["x-content-type-options"] == "nosniff"


def test_the_rate_limiter_refills_continuously() -> None:
    from stoq.web.auth import AuthGate, RateLimiter

    now = [100.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6 per minute: one more every 10 s
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0  # per key
    now[0] += 7.5
    assert limiter.take("a") == pytest.approx(2.5)  # three quarters of a request refilled
    now[0] += 2.5
    assert limiter.take("a") == 0.0
    assert RateLimiter(0).take("a") == 0.0  # no limit
    gate = AuthGate(None, None, limiter, public=("/metrics",))  # type: ignore[arg-type]
    assert [gate.is_public(p) for p in ("/metrics", "/metrics/x", "/metricsx", "/api/scans")] == [True, True, False, False]
