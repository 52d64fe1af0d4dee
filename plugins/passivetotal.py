"""The ``passivetotal`` worker: passive DNS (RiskIQ PassiveTotal API v2) of the domains and IPs in a text payload."""

from __future__ import annotations

import base64
import os
from typing import Any

from pydantic import Field

from stoq.plugin import Payload, Result, WorkerPlugin
from stoq_plugins._intel import Answer, ServiceOptions, indicators, run_lookups, service_for


def resolutions(answer: Answer, cap: int) -> dict[str, Any]:
    """What the document keeps of a passive DNS answer: first and last seen, and the resolutions."""
    if answer.status == 404 or not isinstance(answer.data, dict):
        return {"found": False}
    results = [r for r in answer.data.get("results") or [] if isinstance(r, dict)]
    return {"found": bool(results), "first_seen": answer.data.get("firstSeen"), "last_seen": answer.data.get("lastSeen"),
            "total": answer.data.get("totalRecords", len(results)),
            "resolutions": [{k: r.get(k) for k in ("resolve", "resolveType", "recordType", "firstSeen", "lastSeen")}
                            for r in results[:cap]]}


class PassivetotalPlugin(WorkerPlugin):
    """Passive DNS of the domains and IP addresses found in a text payload, from the RiskIQ PassiveTotal
    API v2 (now part of Microsoft Defender Threat Intelligence; see docs/plugins/passivetotal.md).

    Request, per indicator (at most ``max_indicators``): ``GET /v2/dns/passive?query={indicator}`` with
    HTTP basic authentication ``username:api_key``. Output ``{"indicators": [{"kind", "value", "found",
    "first_seen", "last_seen", "total", "resolutions": [...]}]}`` (at most ``max_resolutions`` each).
    Flags: ``intel:*`` for a failure, ``limit:intel-iocs``.
    """

    name = "passivetotal"
    version = "1.0"

    class Options(ServiceOptions):
        url: str = Field("https://api.passivetotal.org", description="PassiveTotal API's address (API under /v2).")
        rate: str = Field("10/minute", description="Most requests per period for the whole cluster.")
        username: str = Field("", description="Account e-mail (empty: STOQ_PASSIVETOTAL__USERNAME of the running process).")
        max_resolutions: int = Field(50, ge=0, description="Most resolutions kept per indicator.")

    def scan(self, payload: Payload, options: Options) -> Result:
        user = options.username or os.environ.get("STOQ_PASSIVETOTAL__USERNAME", "")

        def auth(key: str) -> dict[str, str]:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}

        service = service_for(self, options, auth)
        found, cut = indicators(payload, options, ("domains", "ipv4s", "ipv6s"))
        answers, failed = run_lookups([
            (lambda kind=kind, value=value: {"kind": kind, "value": value} | resolutions(service.lookup(
                "dns", value, lambda: service.call("GET", "/v2/dns/passive", query={"query": value})),
                options.max_resolutions))
            for kind, value in found])
        data: dict[str, Any] = {"indicators": answers} | ({"error": failed[0]} if failed else {})
        return Result(data=data if found else None, flags=cut + failed)
