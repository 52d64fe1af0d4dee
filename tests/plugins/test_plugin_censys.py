"""censys against a fake Search API v2: one GET /api/v2/hosts/{ip} per address of a text payload, basic
authentication api_id:secret, host records summarised, an unknown host a normal answer."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Callable

import pytest
from intelfake import FakeService, reply

from stoq.plugin import Payload
from stoq_plugins.censys import CensysPlugin


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("STOQ_RESULT_BACKEND", raising=False)


HOST = {"code": 200, "status": "OK", "result": {
    "ip": "198.51.100.4", "services": [{"port": 443, "service_name": "HTTP", "transport_protocol": "TCP", "banner": "x"}],
    "location": {"country": "Nowhere"}, "autonomous_system": {"asn": 64500, "name": "EXAMPLE-AS"},
    "dns": {"names": ["host.example.net"]}, "last_updated_at": "2026-12-01T00:00:00Z"}}


def test_hosts_of_a_text_payload(make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"c2 at 198.51.100.4, fallback 192.0.2.9\n", mime="text/plain")
    with FakeService({("GET", "/api/v2/hosts/198.51.100.4"): reply(200, HOST)}) as fake:
        opts = CensysPlugin.Options(url=fake.url, api_id="my-id", api_key="my-secret", rate="")
        result = CensysPlugin().scan(payload, opts)
    assert fake.requests() == [("GET", "/api/v2/hosts/192.0.2.9"), ("GET", "/api/v2/hosts/198.51.100.4")]
    assert {s.headers["authorization"] for s in fake.seen} == {"Basic " + base64.b64encode(b"my-id:my-secret").decode()}
    assert result.data == {"hosts": [
        {"ip": "192.0.2.9", "found": False},
        {"ip": "198.51.100.4", "found": True, "services": [{"port": 443, "service_name": "HTTP", "transport_protocol": "TCP"}],
         "country": "Nowhere", "asn": 64500, "as_name": "EXAMPLE-AS", "dns_names": ["host.example.net"],
         "last_updated_at": "2026-12-01T00:00:00Z"}]}
    assert result.flags == []


def test_binary_payloads_send_nothing(make_payload: Callable[..., Payload]) -> None:
    with FakeService() as fake:
        result = CensysPlugin().scan(make_payload(b"\x00198.51.100.4"), CensysPlugin.Options(url=fake.url, api_key="k"))
    assert result.data is None and fake.seen == []
