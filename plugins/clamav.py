"""The ``clamav`` worker: a payload scanned by a running clamd (ClamAV's daemon) through ``INSTREAM``."""

from __future__ import annotations

import time

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin
from stoq_plugins._clamd import Address, command, instream, read_reply

MiB = 1 << 20
#: Seconds clamd's ``VERSION`` answer (engine and signature database versions) is reused.
VERSION_TTL = 60.0


class ClamavPlugin(WorkerPlugin):
    """Scans a payload with clamd (ClamAV's daemon) over its UNIX socket or TCP; reports the signatures found.

    Each payload is streamed with ``INSTREAM`` on a connection of its own (``stoq_plugins._clamd``), so a
    clamd restarted, or down and back, is reached again by the next payload without restarting the
    worker. clamd applies its own limits (``StreamMaxLength``, ``MaxFileSize``, ``MaxScanSize``...,
    from its ``clamd.conf``). Output ``{"verdict": "infected" | "clean" | "incomplete" (a limit of
    clamd's stopped the scan, nothing found), "signatures" (names, in clamd's order), "limits" (clamd's
    limits hit: ``stream-size``, or with ``AlertExceedsMax`` the lower-cased ``Heuristics.Limits.Exceeded``
    suffix such as ``maxfilesize``), "reply" (clamd's answer), "version" (clamd's ``VERSION``: engine
    and database versions)}``. Flags: ``clamav:infected``, ``limit:clamd-<limit>`` for each limit, and
    ``limit:clamav-size`` (payload over ``max_bytes``: not sent). clamd unreachable, or closing without
    an answer: a ``ClamdUnavailable`` error entry; an ``ERROR`` answer: a ``ClamdError`` entry.
    """

    name = "clamav"
    version = "1.0"

    class Options(PluginOptions):
        socket: str = Field("/var/run/clamav/clamd.ctl", description="clamd's LocalSocket (Debian's default "
                                                                     "path); unused when host is set.")
        host: str = Field("", description="clamd's TCPAddr, to use TCP instead of the UNIX socket.")
        port: int = Field(3310, ge=1, le=65535, description="clamd's TCPSocket port (with host).")
        timeout: float = Field(60.0, gt=0, description="Seconds to wait for clamd on each connection "
                                                       "(connect, send, answer).")
        max_bytes: int = Field(100 * MiB, ge=0, description="Largest payload sent, in bytes (limit:clamav-size); "
                                                            "keep it at most clamd's StreamMaxLength.")

    def __init__(self, options: PluginOptions | None = None) -> None:
        super().__init__(options)
        self._version: tuple[Address, float, str] | None = None

    def _engine(self, where: Address, timeout: float) -> str:
        now = time.monotonic()
        if self._version is None or self._version[0] != where or now - self._version[1] > VERSION_TTL:
            self._version = (where, now, command(where, "VERSION", timeout).strip())
        return self._version[2]

    def scan(self, payload: Payload, options: Options) -> Result:
        if payload.size > options.max_bytes:
            return Result(data=None, flags=["limit:clamav-size"])
        where = Address(host=options.host, port=options.port) if options.host else Address(path=options.socket)
        verdict = read_reply(instream(where, payload.content, options.timeout))
        flags = (["clamav:infected"] if verdict.signatures else []) + [f"limit:clamd-{n}" for n in verdict.limits]
        state = "infected" if verdict.signatures else "incomplete" if verdict.limits else "clean"
        return Result(data={"verdict": state, "signatures": verdict.signatures, "limits": verdict.limits,
                            "reply": verdict.reply, "version": self._engine(where, options.timeout)}, flags=flags)
