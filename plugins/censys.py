"""The ``censys`` worker: Censys Search API v2 host records of the IP addresses in a text payload."""

from __future__ import annotations

import base64
import os
from typing import Any

from pydantic import Field

from stoq.plugin import Payload, Result, WorkerPlugin
from stoq_plugins._intel import Answer, ServiceOptions, indicators, run_lookups, service_for


def host(answer: Answer) -> dict[str, Any]:
    """What the document keeps of a host: its services (port, name, transport), location, AS, DNS names."""
    if answer.status == 404 or not isinstance(answer.data, dict):
        return {"found": False}
    result = answer.data.get("result") or {}
    return {"found": True,
            "services": [{k: s.get(k) for k in ("port", "service_name", "transport_protocol")}
                         for s in result.get("services") or [] if isinstance(s, dict)],
            "country": (result.get("location") or {}).get("country"),
            "asn": (result.get("autonomous_system") or {}).get("asn"),
            "as_name": (result.get("autonomous_system") or {}).get("name"),
            "dns_names": ((result.get("dns") or {}).get("names") or [])[:20],
            "last_updated_at": result.get("last_updated_at")}


class CensysPlugin(WorkerPlugin):
    """Enriches the IP addresses found in a text payload with their Censys host records (Search API v2).

    Request, per address (at most ``max_indicators``): ``GET /api/v2/hosts/{ip}`` with HTTP basic
    authentication ``api_id:api_key`` (Censys's "API ID" and "Secret"). Built against the Search API v2
    (search.censys.io/api); Censys's newer Platform API v3 uses other paths and a bearer token. Output
    ``{"hosts": [{"ip", "found", "services", "country", "asn", "as_name", "dns_names", "last_updated_at"}]}``.
    Flags: ``intel:*`` for a failure, ``limit:intel-iocs``.
    """

    name = "censys"
    version = "1.0"

    class Options(ServiceOptions):
        url: str = Field("https://search.censys.io", description="Censys Search's address (API under /api/v2).")
        rate: str = Field("10/minute", description="Most requests per period for the whole cluster.")
        api_id: str = Field("", description="Censys API ID (empty: STOQ_CENSYS__API_ID of the running process).")

    def scan(self, payload: Payload, options: Options) -> Result:
        api_id = options.api_id or os.environ.get("STOQ_CENSYS__API_ID", "")

        def auth(secret: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{api_id}:{secret}".encode()).decode()}

        service = service_for(self, options, auth)
        found, cut = indicators(payload, options, ("ipv4s", "ipv6s"))
        answers, failed = run_lookups([
            (lambda ip=ip: {"ip": ip} | host(service.lookup("host", ip, lambda: service.call("GET", f"/api/v2/hosts/{ip}"))))
            for _, ip in found])
        data: dict[str, Any] = {"hosts": answers} | ({"error": failed[0]} if failed else {})
        return Result(data=data if found else None, flags=cut + failed)
