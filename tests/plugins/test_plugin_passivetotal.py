"""passivetotal against a fake PassiveTotal API v2: GET /v2/dns/passive?query= per indicator, basic
authentication username:key, the resolutions kept and capped, and a 429 with Retry-After retried."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable

import pytest
from intelfake import FakeService, reply

from stoq.plugin import Payload
from stoq_plugins.passivetotal import PassivetotalPlugin


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STOQ_RESULT_BACKEND", raising=False)


def record(resolve: str, kind: str) -> dict[str, str]:
    return {"resolve": resolve, "resolveType": kind, "recordType": "A", "firstSeen": "2026-01-01 00:00:00",
            "lastSeen": "2026-02-01 00:00:00", "source": ["riskiq"], "collected": "2026-02-01 00:00:00"}


def test_passive_dns_of_domains_and_ips(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"beacon to evil.example.net and 203.0.113.5\n", mime="text/plain")
    answer = {"queryValue": "evil.example.net", "totalRecords": 3, "firstSeen": "2025-01-01 00:00:00",
              "lastSeen": "2026-02-01 00:00:00",
              "results": [record("203.0.113.5", "ip"), record("203.0.113.6", "ip"), record("203.0.113.7", "ip")]}

    def route(seen):  # one path, answered by the query
        return reply(200, answer) if seen.query == {"query": ["evil.example.net"]} else reply(200, {"results": [], "totalRecords": 0})

    with FakeService({("GET", "/v2/dns/passive"): route}) as fake:
        opts = PassivetotalPlugin.Options(url=fake.url, username="me@example.org", api_key="pt-key", rate="",
                                          max_resolutions=2)
        result = PassivetotalPlugin().scan(payload, opts)
    assert [(s.path, s.query) for s in fake.seen] == [("/v2/dns/passive", {"query": ["evil.example.net"]}),
                                                      ("/v2/dns/passive", {"query": ["203.0.113.5"]})]
    assert fake.seen[0].headers["authorization"] == "Basic " + base64.b64encode(b"me@example.org:pt-key").decode()
    keep = ("resolve", "resolveType", "recordType", "firstSeen", "lastSeen")
    assert result.data == {"indicators": [
        {"kind": "domains", "value": "evil.example.net", "found": True, "first_seen": "2025-01-01 00:00:00",
         "last_seen": "2026-02-01 00:00:00", "total": 3,
         "resolutions": [{k: record(ip, "ip")[k] for k in keep} for ip in ("203.0.113.5", "203.0.113.6")]},
        {"kind": "ipv4s", "value": "203.0.113.5", "found": False, "first_seen": None, "last_seen": None, "total": 0,
         "resolutions": []}]}


def test_quota_after_retries_keeps_what_was_answered(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"a.example.com b.example.com\n", mime="text/plain")

    def route(seen):
        return reply(200, {"results": []}) if seen.query["query"] == ["a.example.com"] else reply(429, {}, Retry_After="0")

    with FakeService({("GET", "/v2/dns/passive"): route}) as fake:
        result = PassivetotalPlugin().scan(payload, PassivetotalPlugin.Options(url=fake.url, api_key="k", rate="", retries=1))
    assert len(fake.seen) == 3 and result.flags == ["intel:quota"]
    assert result.data["error"] == "intel:quota" and [i["value"] for i in result.data["indicators"]] == ["a.example.com"]
