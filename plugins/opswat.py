"""The ``opswat`` worker: a payload's hash looked up on MetaDefender (Cloud API v4, or Core), optionally submitted."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from stoq.plugin import Payload, Result, WorkerPlugin
from stoq_plugins._intel import Answer, ServiceError, ServiceOptions, service_for


def verdict(answer: Answer) -> dict[str, Any]:
    """What the document keeps of a MetaDefender report: found or not, the overall result and the engines
    that detected something."""
    if answer.status == 404 or not isinstance(answer.data, dict):
        return {"found": False}
    results = answer.data.get("scan_results") or {}
    details = results.get("scan_details") or {}
    return {"found": True, "data_id": answer.data.get("data_id"),
            "result": results.get("scan_all_result_a"), "result_code": results.get("scan_all_result_i"),
            "progress": results.get("progress_percentage"), "engines": results.get("total_avs"),
            "detected": results.get("total_detected_avs"),
            "threats": {engine: d["threat_found"] for engine, d in sorted(details.items())
                        if isinstance(d, dict) and d.get("threat_found")}}


class OpswatPlugin(WorkerPlugin):
    """Looks a payload's sha256 up on OPSWAT MetaDefender (Cloud API v4, or a Core server with ``url``);
    optionally submits an unknown payload and polls for its verdict.

    Requests (header ``apikey``): ``GET /v4/hash/{sha256}``; with ``upload`` and a hash unknown to the
    service (404), ``POST /v4/file`` (the payload's bytes, ``Content-Type: application/octet-stream``,
    header ``filename``: its sha256) then ``GET /v4/file/{data_id}`` every ``poll_seconds`` until
    ``progress_percentage`` is 100, at most ``max_polls`` times. Output ``{"found", "data_id", "result",
    "result_code", "progress", "engines", "detected", "threats": {engine: threat}}`` (``{"found": false}``
    for an unknown hash). Flags: ``opswat:detected``, ``opswat:pending`` (polls used up before the
    verdict), ``intel:*`` for a failure.
    """

    name = "opswat"
    version = "1.0"

    class Options(ServiceOptions):
        url: str = Field("https://api.metadefender.com", description="MetaDefender Cloud, or a Core server's address.")
        rate: str = Field("10/minute", description="Most requests per period for the whole cluster.")
        upload: bool = Field(False, description="Submit a payload the service does not know (it is then stored "
                                                "by OPSWAT): leave off for private files.")
        poll_seconds: float = Field(5.0, ge=0, description="Seconds between polls of a submitted file.")
        max_polls: int = Field(6, ge=0, description="Most polls of a submitted file (opswat:pending after).")

    def _auth(self, key: str) -> dict[str, str]:
        return {"apikey": key}

    def scan(self, payload: Payload, options: Options) -> Result:
        service = service_for(self, options, self._auth)
        try:
            answer = service.lookup("hash", payload.sha256, lambda: service.call("GET", f"/v4/hash/{payload.sha256}"))
            if answer.status == 404 and options.upload:
                sent = service.call("POST", "/v4/file", body=payload.content,
                                    headers={"Content-Type": "application/octet-stream", "filename": payload.sha256})
                data_id = (sent.data or {}).get("data_id")
                for _ in range(options.max_polls):
                    time.sleep(options.poll_seconds)
                    answer = service.call("GET", f"/v4/file/{data_id}")
                    if (answer.data or {}).get("scan_results", {}).get("progress_percentage") == 100:
                        break
        except ServiceError as exc:
            return Result(data={"error": exc.flag}, flags=[exc.flag])
        data = verdict(answer)
        flags = ["opswat:detected"] if data.get("detected") else []
        if options.upload and data.get("found") and data.get("progress") != 100:
            flags.append("opswat:pending")
        return Result(data=data, flags=flags)
