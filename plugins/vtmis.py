"""The ``vtmis`` worker: VirusTotal (API v3) reports on a payload's sha256 and on the indicators in its text."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from pydantic import Field

from stoq.plugin import Payload, Result, WorkerPlugin
from stoq_plugins._intel import Answer, Service, ServiceError, ServiceOptions, indicators, run_lookups, service_for

#: Largest file ``POST /api/v3/files`` takes (bigger ones need an upload URL, not used here).
UPLOAD_MAX = 32 * 1024 * 1024
#: Indicator kinds (iocextract's names) and VirusTotal's collection for each.
COLLECTIONS = {"urls": "urls", "domains": "domains", "ipv4s": "ip_addresses", "ipv6s": "ip_addresses"}


def summary(answer: Answer) -> dict[str, Any]:
    """What the document keeps of a VirusTotal object: found or not, and its analysis figures."""
    if answer.status == 404 or not isinstance(answer.data, dict):
        return {"found": False}
    attributes = answer.data.get("data", {}).get("attributes", {})
    keep = ("last_analysis_stats", "reputation", "last_analysis_date", "type_description", "meaningful_name",
            "popular_threat_classification", "tags", "country", "as_owner", "categories")
    return {"found": True, "id": answer.data.get("data", {}).get("id")} | {k: attributes[k] for k in keep if k in attributes}


def url_id(url: str) -> str:
    """VirusTotal's identifier of a URL: its unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


class VtmisPlugin(WorkerPlugin):
    """Looks a payload up on VirusTotal (API v3) by sha256, optionally uploads it, and reports on the URLs,
    domains and IP addresses found in a text payload.

    Requests (header ``x-apikey``): ``GET /api/v3/files/{sha256}``; with ``upload`` and a file unknown to
    VirusTotal, ``POST /api/v3/files`` (multipart, field ``file``: the payload's bytes, which VirusTotal then
    shares with its subscribers); ``GET /api/v3/urls/{id}``, ``/domains/{domain}``, ``/ip_addresses/{ip}``
    for at most ``max_indicators`` indicators. Output ``{"file": summary, "uploaded": analysis id,
    "indicators": [{"kind", "value", ...summary}]}``; a summary is ``{"found": false}`` for what VirusTotal
    does not know. Flags: ``vtmis:detected`` (an engine calls it malicious), ``intel:*`` for a failure,
    ``limit:intel-iocs``, ``limit:vtmis-upload-size``.
    """

    name = "vtmis"
    version = "1.0"

    class Options(ServiceOptions):
        url: str = Field("https://www.virustotal.com", description="VirusTotal's address (API under /api/v3).")
        rate: str = Field("4/minute", description="Most requests per period for the whole cluster "
                                                  "(the public API's quota: 4/minute).")
        upload: bool = Field(False, description="Upload a payload VirusTotal does not know. The upload SHARES "
                                                "THE FILE with VirusTotal's subscribers: leave off for private files.")
        lookup_file: bool = Field(True, description="Look up the payload's sha256.")

    def _upload(self, service: Service, payload: Payload) -> str | None:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{payload.sha256}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + payload.content + f"\r\n--{boundary}--\r\n".encode()
        answer = service.call("POST", "/api/v3/files", body=body,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return (answer.data or {}).get("data", {}).get("id")

    def scan(self, payload: Payload, options: Options) -> Result:
        service = service_for(self, options, lambda key: {"x-apikey": key})
        data: dict[str, Any] = {}
        flags: list[str] = []
        try:
            if options.lookup_file:
                answer = service.lookup("file", payload.sha256,
                                        lambda: service.call("GET", f"/api/v3/files/{payload.sha256}"))
                data["file"] = summary(answer)
                if data["file"].get("last_analysis_stats", {}).get("malicious", 0) > 0:
                    flags.append("vtmis:detected")
                if answer.status == 404 and options.upload:
                    if payload.size > UPLOAD_MAX:
                        flags.append("limit:vtmis-upload-size")
                    else:
                        data["uploaded"] = self._upload(service, payload)
                        service.forget("file", payload.sha256)  # known now: the next scan asks again
        except ServiceError as exc:
            return Result(data=data | {"error": exc.flag}, flags=flags + [exc.flag])
        found, cut = indicators(payload, options, tuple(COLLECTIONS))
        answers, failed = run_lookups([
            (lambda kind=kind, value=value: {"kind": kind, "value": value} | summary(service.lookup(
                kind, value, lambda: service.call("GET", f"/api/v3/{COLLECTIONS[kind]}/"
                                                  f"{url_id(value) if kind == 'urls' else value}"))))
            for kind, value in found])
        if found:
            data["indicators"] = answers
        if failed:
            data["error"] = failed[0]
        return Result(data=data, flags=flags + cut + failed)
