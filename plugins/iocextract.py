"""The ``iocextract`` worker: URLs, domains, IP addresses, e-mail addresses, hashes and CVE ids in a payload."""

from __future__ import annotations

import time

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin
from stoq_plugins._ioc import IOC_TYPES, extract, finder


class IocextractPlugin(WorkerPlugin):
    """Extracts indicators of compromise from a payload's text, defanged forms (``hxxp``, ``[.]``, ``(.)``)
    refanged, through ioc-finder.

    Output: ``{"examined", "iocs": {type: sorted distinct values}, "counts": {type: distinct values
    found}}`` for the types ``urls``, ``domains``, ``ipv4s``, ``ipv6s``, ``email_addresses``, ``md5s``,
    ``sha1s``, ``sha256s``, ``cves``. The text is the first ``max_size`` bytes read as UTF-8 (invalid bytes
    replaced). Flags: ``limit:ioc-size`` (bytes past ``max_size`` not read), ``limit:ioc-count`` (a type had
    more than ``max_per_type`` values: the first in sorted order are listed, ``counts`` has them all),
    ``limit:ioc-time`` (``max_seconds`` passed: the rest of the text was not scanned).
    """

    name = "iocextract"
    version = "1.0"
    #: Routed to text when in the worker set (the default's): text files, the text children of
    #: ``pdftext``, ``email`` and the archives, e-mail headers, scripts and markup. Not run on binaries,
    #: where ioc-finder costs the most and finds the least (docs/performance.md).
    mimes = frozenset({"text/*", "message/rfc822", "application/json", "application/javascript",
                       "application/x-javascript", "application/xml", "application/xhtml+xml",
                       "application/x-sh", "application/x-shellscript"})

    class Options(PluginOptions):
        max_size: int = Field(1024 * 1024, ge=0, description="Most bytes read from the start of the payload.")
        max_per_type: int = Field(1000, ge=0, description="Most values listed per IOC type.")
        max_seconds: float = Field(20.0, gt=0, description="Time after which no further text is scanned "
                                   "(checked between chunks of 2048 characters).")

    def setup(self) -> None:
        finder()  # import ioc-finder now, before a pool forks, not in each process's first scan

    def scan(self, payload: Payload, options: Options) -> Result:
        content = payload.content[:options.max_size]
        flags = ["limit:ioc-size"] if payload.size > options.max_size else []
        found = extract(content.decode("utf-8", "replace"), time.monotonic() + options.max_seconds)
        if found.timed_out:
            flags.append("limit:ioc-time")
        iocs = {kind: sorted(found.iocs[kind]) for kind in IOC_TYPES}
        if any(len(values) > options.max_per_type for values in iocs.values()):
            flags.append("limit:ioc-count")
        return Result(data={"examined": len(content),
                            "iocs": {kind: values[:options.max_per_type] for kind, values in iocs.items()},
                            "counts": {kind: len(values) for kind, values in iocs.items()}}, flags=flags)
