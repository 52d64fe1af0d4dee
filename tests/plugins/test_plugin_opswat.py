"""opswat against a fake MetaDefender Cloud API v4: hash lookup, submission and bounded polling, the
exact requests (apikey header, body, filename header) and the named failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from intelfake import FakeService, reply

from stoq.plugin import Payload
from stoq_plugins.opswat import OpswatPlugin

KEY = "md-secret-key"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STOQ_RESULT_BACKEND", raising=False)


def report(data_id: str, progress: int, details: dict[str, Any]) -> dict[str, Any]:
    detected = sum(1 for d in details.values() if d["threat_found"])
    return {"data_id": data_id, "scan_results": {"scan_details": details, "scan_all_result_i": 1 if detected else 0,
                                                 "scan_all_result_a": "Infected" if detected else "No Threat Detected",
                                                 "total_avs": len(details), "total_detected_avs": detected,
                                                 "progress_percentage": progress}}


def scan(fake: FakeService, payload: Payload, **options: Any) -> Any:
    opts = OpswatPlugin.Options.model_validate({"url": fake.url, "api_key": KEY, "rate": "", **options})
    return OpswatPlugin().scan(payload, opts)


DETAILS = {"EngineB": {"threat_found": "", "scan_result_i": 0}, "EngineA": {"threat_found": "EICAR-Test", "scan_result_i": 1}}


def test_hash_lookup(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"known")
    with FakeService({("GET", f"/v4/hash/{payload.sha256}"): reply(200, report("d1", 100, DETAILS))}) as fake:
        result = scan(fake, payload)
    assert result.data == {"found": True, "data_id": "d1", "result": "Infected", "result_code": 1, "progress": 100,
                           "engines": 2, "detected": 1, "threats": {"EngineA": "EICAR-Test"}}
    assert result.flags == ["opswat:detected"]
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.headers["apikey"], seen.body) == ("GET", f"/v4/hash/{payload.sha256}", KEY, b"")


def test_unknown_hash_submitted_and_polled_until_done(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"new file")
    routes = {("POST", "/v4/file"): reply(200, {"data_id": "abc123", "status": "inqueue"}),
              ("GET", "/v4/file/abc123"): [reply(200, report("abc123", 40, {})), reply(200, report("abc123", 100, DETAILS))]}
    with FakeService(routes) as fake:
        assert scan(fake, payload).data == {"found": False}
        result = scan(fake, payload, upload=True, poll_seconds=0, cache_ttl=0)
    assert fake.requests() == [("GET", f"/v4/hash/{payload.sha256}"), ("GET", f"/v4/hash/{payload.sha256}"),
                               ("POST", "/v4/file"), ("GET", "/v4/file/abc123"), ("GET", "/v4/file/abc123")]
    post = fake.seen[2]
    assert post.body == b"new file" and post.headers["filename"] == payload.sha256 and post.headers["apikey"] == KEY
    assert post.headers["content-type"] == "application/octet-stream"
    assert result.data["detected"] == 1 and result.flags == ["opswat:detected"]


def test_polls_are_bounded(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"slow")
    routes = {("POST", "/v4/file"): reply(200, {"data_id": "s"}), ("GET", "/v4/file/s"): reply(200, report("s", 10, {}))}
    with FakeService(routes) as fake:
        result = scan(fake, payload, upload=True, poll_seconds=0, max_polls=3)
    assert fake.requests().count(("GET", "/v4/file/s")) == 3
    assert result.data["progress"] == 10 and result.flags == ["opswat:pending"]


def test_unauthorised(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"k")
    with FakeService({("GET", f"/v4/hash/{payload.sha256}"): reply(401, {"error": {"code": 401000}})}) as fake:
        result = scan(fake, payload)
    assert result.flags == ["intel:unauthorised"] and KEY not in repr(result)
