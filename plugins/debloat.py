"""The ``debloat`` carver: a PE padded with junk to evade scanners, emitted without its padding."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import CarverPlugin, Extracted, Payload, PluginOptions, Result
from stoq_plugins._debloat import debloat

MiB = 1 << 20


class DebloatPlugin(CarverPlugin):
    """Emits a bloated PE (hundreds of MB of junk in its overlay or its last section) without the junk,
    and flags the payload ``pe:bloated``.

    Junk is found from the end backwards a MiB at a time (``stoq_plugins._debloat``): runs of the byte
    that ends the file, and chunks zlib shrinks ``junk_ratio`` times or more. When at least ``min_bloat``
    bytes of it end the overlay, the child is the PE up to the junk (the rest of the overlay kept); when
    they end the last section, the section is cut there (rounded up to the file alignment) and its
    ``SizeOfRawData`` rewritten. The child is named after the payload with ``.debloated`` and its meta
    holds where (``overlay`` or ``section``), junk_offset, junk_size and original_size. Output ``{"bloated",
    "where", "junk_offset", "junk_size"}``. Flags: ``pe:bloated``; ``limit:debloat-scan`` when the walk
    examined ``max_scan`` bytes of junk without reaching its start (the child is then cut at that point,
    junk before it kept).
    """

    name = "debloat"
    version = "1.0"
    mimes = frozenset({"application/x-dosexec", "application/vnd.microsoft.portable-executable"})

    class Options(PluginOptions):
        min_bloat: int = Field(32 * MiB, ge=1, description="Least junk, in bytes, for a PE to count as bloated.")
        junk_ratio: float = Field(20, gt=1, description="A MiB that zlib shrinks this many times or more is junk.")
        max_scan: int = Field(1024 * MiB, ge=MiB, description="Most bytes examined from the end for junk.")

    def accepts(self, payload: Payload) -> bool:
        return payload.size >= self.options.min_bloat and payload.content[:2] == b"MZ" and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        found = debloat(payload.content, options.min_bloat, options.junk_ratio, options.max_scan)
        if found is None:
            return Result(data={"bloated": False, "where": None, "junk_offset": None, "junk_size": 0})
        stem = (payload.filename or "pe").rsplit("/", 1)[-1]
        child = Extracted(found.content, filename=f"{stem}.debloated", meta={
            "where": found.where, "junk_offset": found.junk_offset, "junk_size": found.junk_size,
            "original_size": payload.size})
        flags = ["pe:bloated"] + (["limit:debloat-scan"] if found.capped else [])
        return Result(data={"bloated": True, "where": found.where, "junk_offset": found.junk_offset,
                            "junk_size": found.junk_size}, children=[child], flags=flags)
