"""The ``hash`` worker: ssdeep and TLSH similarity digests of a payload."""

from __future__ import annotations

from typing import Any

import ppdeep
import tlsh
from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin

#: TLSH needs this many bytes at least; below it, or with too little variety, it answers "TNULL".
TLSH_MIN_SIZE = 50


class HashPlugin(WorkerPlugin):
    """Computes the ssdeep (context-triggered piecewise) and TLSH (locality-sensitive) digests of a payload.

    Output: ``{"ssdeep", "tlsh", "skipped": {"ssdeep": reason, "tlsh": reason}}``; an absent digest is
    null with its reason in ``skipped``: ``too-large`` (past ``ssdeep_max_size``/``tlsh_max_size``,
    flag ``limit:hash-size``), ``too-short`` (TLSH, under 50 bytes) or ``too-uniform`` (TLSH, too
    little variety in the bytes). ssdeep is ppdeep (pure Python, Apache-2.0); TLSH is py-tlsh, whose
    digests carry the ``T1`` version prefix.
    """

    name = "hash"
    version = "1.0"

    class Options(PluginOptions):
        ssdeep_max_size: int = Field(16 * 1024 * 1024, ge=0, description="Largest payload given an ssdeep "
                                     "digest, in bytes (ppdeep is pure Python: see docs/performance.md).")
        tlsh_max_size: int = Field(1024 * 1024 * 1024, ge=0, description="Largest payload given a TLSH digest, "
                                   "in bytes.")

    def scan(self, payload: Payload, options: Options) -> Result:
        data: dict[str, Any] = {"ssdeep": None, "tlsh": None, "skipped": {}}
        content, size = payload.content, payload.size
        if size > options.ssdeep_max_size:
            data["skipped"]["ssdeep"] = "too-large"
        else:
            data["ssdeep"] = ppdeep.hash(content)
        if size > options.tlsh_max_size:
            data["skipped"]["tlsh"] = "too-large"
        elif size < TLSH_MIN_SIZE:
            data["skipped"]["tlsh"] = "too-short"
        else:
            digest = tlsh.hash(content)
            if digest == "TNULL" or not digest:
                data["skipped"]["tlsh"] = "too-uniform"
            else:
                data["tlsh"] = digest
        flags = ["limit:hash-size"] if "too-large" in data["skipped"].values() else []
        return Result(data=data, flags=flags)
