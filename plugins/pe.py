"""The ``pe`` carver: Windows executables embedded anywhere in a payload (documents, images, overlays)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import CarverPlugin, Extracted, Payload, PluginOptions, Result
from stoq_plugins._carve import carve

MiB = 1 << 20


class PePlugin(CarverPlugin):
    """Carves the PE files (EXE, DLL) found at any offset of a payload, each sized from its headers.

    Every ``MZ`` is a candidate whose ``e_lfanew`` must lead to a ``PE\\0\\0`` signature and whose
    headers pefile must accept. A PE's size is the end of its furthest section's raw data (at least
    ``SizeOfHeaders``), including a certificate table that follows; it is cut at the payload's end and
    at ``max_size`` (meta ``truncated``). The PE that is the whole payload is not carved (what it
    contains is). Output ``{"candidates" (examined), "rejected" (not a PE), "carved"}``; each child's
    meta holds offset, size, is_dll, machine and truncated. Flags: ``limit:pe-candidates`` when
    ``max_candidates`` stopped the search, ``limit:pe-size`` when ``max_size`` cut a PE.
    """

    name = "pe"
    version = "1.0"

    class Options(PluginOptions):
        max_candidates: int = Field(64, ge=0, description="Most MZ candidates examined in one payload.")
        max_size: int = Field(64 * MiB, ge=1, description="Largest PE carved, in bytes (larger ones are cut).")

    def accepts(self, payload: Payload) -> bool:
        return b"MZ" in payload.content and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        found, examined, rejected, capped = carve(payload.content, options.max_candidates, options.max_size)
        children = [Extracted(payload.content[pe.offset:pe.offset + pe.size],
                              filename=f"pe_{pe.offset:08x}.{'dll' if pe.is_dll else 'exe'}",
                              meta={"offset": pe.offset, "size": pe.size, "is_dll": pe.is_dll,
                                    "machine": pe.machine, "truncated": pe.truncated})
                    for pe in found]
        flags = ["limit:pe-candidates"] if capped else []
        if any(pe.size == options.max_size < pe.declared_size for pe in found):
            flags.append("limit:pe-size")
        return Result(data={"candidates": examined, "rejected": rejected, "carved": len(children)},
                      children=children, flags=flags)
