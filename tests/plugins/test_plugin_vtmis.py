"""vtmis against a fake VirusTotal API v3 on loopback: the exact requests sent (method, path, x-apikey
header, upload body), the summaries kept, the cache, and the named failures (no key, 401, 429 with
Retry-After, 5xx, offline). The cache and the rate limit use SQLite under a temporary XDG_CACHE_HOME."""

from __future__ import annotations

import base64
import logging
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
from intelfake import FakeService, reply

from stoq.plugin import Payload
from stoq_plugins._intel import parse_rate, retry_wait
from stoq_plugins.vtmis import VtmisPlugin

KEY = "vt-secret-key-0123456789"
STATS = {"malicious": 3, "suspicious": 0, "undetected": 60, "harmless": 0}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("STOQ_RESULT_BACKEND", "STOQ_VTMIS__API_KEY"):
        monkeypatch.delenv(name, raising=False)


def vt_object(kind: str, ident: str, **attributes: Any) -> dict[str, Any]:
    return {"data": {"type": kind, "id": ident, "links": {"self": "x"}, "attributes": attributes}}


def scan(fake: FakeService, payload: Payload, **options: Any) -> Any:
    plugin = VtmisPlugin()
    plugin.setup()
    opts = VtmisPlugin.Options.model_validate({"url": fake.url, "api_key": KEY, "rate": "", **options})
    return plugin.scan(payload, opts)


def test_file_report_by_sha256_is_summarised_and_flagged(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"MZ not really a PE")
    route = ("GET", f"/api/v3/files/{payload.sha256}")
    answer = vt_object("file", payload.sha256, last_analysis_stats=STATS, reputation=-5,
                       type_description="Win32 EXE", names=["a.exe"], sigma_analysis_results=[{"x": 1}])
    with FakeService({route: reply(200, answer)}) as fake:
        result = scan(fake, payload)
    assert result.data == {"file": {"found": True, "id": payload.sha256, "last_analysis_stats": STATS,
                                    "reputation": -5, "type_description": "Win32 EXE"}}
    assert result.flags == ["vtmis:detected"]
    (seen,) = fake.seen
    assert (seen.method, seen.path, seen.query, seen.body) == ("GET", route[1], {}, b"")
    assert seen.headers["x-apikey"] == KEY and seen.headers["accept"] == "application/json"


def test_an_unknown_file_is_a_normal_answer_and_is_uploaded_only_when_asked(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"private document")
    analysis = {"data": {"type": "analysis", "id": "NjY0MjRlOTFjMDIyYTkyNWM0NjU2NWQzYWNlMzFmZmI6MTQ3NTA0ODI3Nw=="}}
    with FakeService({("POST", "/api/v3/files"): reply(200, analysis)}) as fake:
        assert scan(fake, payload).data == {"file": {"found": False}}
        assert fake.requests() == [("GET", f"/api/v3/files/{payload.sha256}")]
        result = scan(fake, payload, upload=True)  # the cached "unknown", then the upload
        scan(fake, payload)  # the cached answer was dropped at the upload: asked again
    assert result.data == {"file": {"found": False}, "uploaded": analysis["data"]["id"]} and result.flags == []
    get = ("GET", f"/api/v3/files/{payload.sha256}")
    assert fake.requests() == [get, ("POST", "/api/v3/files"), get]
    post = fake.seen[1]
    assert (post.method, post.path, post.headers["x-apikey"]) == ("POST", "/api/v3/files", KEY)
    boundary = post.headers["content-type"].removeprefix("multipart/form-data; boundary=")
    assert post.body == (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{payload.sha256}\""
                         f"\r\nContent-Type: application/octet-stream\r\n\r\nprivate document\r\n--{boundary}--\r\n").encode()


def test_indicators_of_a_text_payload_are_looked_up_in_their_collections(make_payload: Callable[..., Payload]) -> None:
    text = b"see http://bad.example.com/x.php and evil.example.org at 203.0.113.7\n"
    payload = make_payload(text, mime="text/plain")
    url = "http://bad.example.com/x.php"
    url_id = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    routes = {("GET", f"/api/v3/urls/{url_id}"): reply(200, vt_object("url", url_id, last_analysis_stats=STATS)),
              ("GET", "/api/v3/domains/evil.example.org"): reply(200, vt_object("domain", "evil.example.org", reputation=0)),
              ("GET", "/api/v3/ip_addresses/203.0.113.7"): reply(200, vt_object("ip_address", "203.0.113.7", country="ZZ"))}
    with FakeService(routes) as fake:
        result = scan(fake, payload, max_indicators=3)
    # ioc-finder finds the URL's host as a domain too: sorted per kind, cut at 3 in kind order
    assert [(s.method, s.path) for s in fake.seen] == [
        ("GET", f"/api/v3/files/{payload.sha256}"), ("GET", f"/api/v3/urls/{url_id}"),
        ("GET", "/api/v3/domains/bad.example.com"), ("GET", "/api/v3/domains/evil.example.org")]
    assert result.data["indicators"] == [
        {"kind": "urls", "value": url, "found": True, "id": url_id, "last_analysis_stats": STATS},
        {"kind": "domains", "value": "bad.example.com", "found": False},
        {"kind": "domains", "value": "evil.example.org", "found": True, "id": "evil.example.org", "reputation": 0}]
    assert result.flags == ["limit:intel-iocs"]
    assert all(s.headers["x-apikey"] == KEY for s in fake.seen)


def test_a_file_seen_twice_costs_one_request(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"twice")
    route = ("GET", f"/api/v3/files/{payload.sha256}")
    with FakeService({route: reply(200, vt_object("file", payload.sha256, reputation=1))}) as fake:
        first, second = scan(fake, payload), scan(fake, payload)
    assert first.data == second.data == {"file": {"found": True, "id": payload.sha256, "reputation": 1}}
    assert fake.requests() == [route]


@pytest.mark.parametrize(("answers", "flag", "count"), [
    ([reply(401, {"error": {"code": "WrongCredentialsError"}})], "intel:unauthorised", 1),
    ([reply(403, {"error": {"code": "ForbiddenError"}})], "intel:unauthorised", 1),
    ([reply(429, {"error": {"code": "QuotaExceededError"}}, Retry_After="0")], "intel:quota", 3),
    ([reply(503, {})], "intel:unavailable", 3),
    ([reply(400, {"error": {"code": "BadRequestError"}})], "intel:rejected", 1),
    ([reply(200, b"<html>maintenance</html>")], "intel:rejected", 1),
])
def test_failures_are_named_flags(make_payload: Callable[..., Payload], answers: list[Any], flag: str,
                                  count: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    payload = make_payload(b"x")
    with FakeService({("GET", f"/api/v3/files/{payload.sha256}"): answers}) as fake:
        result = scan(fake, payload, retries=2, max_retry_wait=0.5)
    assert result.data == {"error": flag} and result.flags == [flag]
    assert len(fake.seen) == count
    assert KEY not in repr(result) and KEY not in caplog.text


def test_a_retry_after_honoured_then_answered(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"y")
    route = ("GET", f"/api/v3/files/{payload.sha256}")
    with FakeService({route: [reply(429, {}, Retry_After="1"), reply(503, {}), reply(200, vt_object("file", "y"))]}) as fake:
        result = scan(fake, payload, retries=2)
    assert result.data == {"file": {"found": True, "id": "y"}} and len(fake.seen) == 3
    assert fake.seen[1].at - fake.seen[0].at >= 1.0  # Retry-After: 1 waited (an order, not a speed)


def test_a_retry_after_beyond_the_bound_gives_up_at_once(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"z")
    with FakeService({("GET", f"/api/v3/files/{payload.sha256}"): reply(429, {}, Retry_After="3600")}) as fake:
        assert scan(fake, payload, retries=5).flags == ["intel:quota"]
    assert len(fake.seen) == 1


def test_offline_and_no_key(make_payload: Callable[..., Payload]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plugin = VtmisPlugin()
    plugin.setup()
    opts = VtmisPlugin.Options(url=f"http://127.0.0.1:{port}", api_key=KEY, rate="", retries=1, max_retry_wait=0.1)
    assert plugin.scan(make_payload(b"a"), opts).flags == ["intel:offline"]
    assert plugin.scan(make_payload(b"a"), VtmisPlugin.Options(url=f"http://127.0.0.1:{port}")).flags == ["intel:no-key"]


def test_the_key_comes_from_the_environment_when_the_option_is_empty(make_payload: Callable[..., Payload],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOQ_VTMIS__API_KEY", "from-env")
    payload = make_payload(b"env")
    with FakeService() as fake:
        plugin = VtmisPlugin()
        plugin.scan(payload, VtmisPlugin.Options(url=fake.url, rate=""))
    assert fake.seen[0].headers["x-apikey"] == "from-env"
    assert "from-env" not in repr(VtmisPlugin.Options(api_key="from-env"))


def test_rates_and_retry_after_parse() -> None:
    assert parse_rate("4/minute") == (4, 60.0) and parse_rate("10/30s") == (10, 30.0)
    assert parse_rate("1000/day") == (1000, 86400.0) and parse_rate("") is None
    with pytest.raises(ValueError):
        parse_rate("4 per minute")
    with pytest.raises(ValueError, match="is not N/second"):
        VtmisPlugin.Options(rate="4/fortnight")
    assert retry_wait("7", 1.0) == 7.0 and retry_wait(None, 2.0) == 2.0
    assert retry_wait("Wed, 21 Oct 2015 07:28:00 GMT", 5.0) == 0.0  # a date in the past: no wait
