"""The ``swf`` carver: Flash files (FWS, and CWS/ZWS inflated) at the start of a payload or embedded in it."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import CarverPlugin, Extracted, Payload, PluginOptions, Result
from stoq_plugins._swf import SIGNATURES, find, plausible

MiB = 1 << 20


class SwfPlugin(CarverPlugin):
    """Carves the SWF files found at any offset of a payload, inflating compressed ones to FWS form.

    A candidate is ``FWS``/``CWS``/``ZWS``, a version byte (1-64) and a little-endian length of at least
    13. An FWS is carved as it is, cut at the payload's end and at ``max_size``; the body of a CWS
    (zlib) or ZWS (raw LZMA1 with its 5 property bytes) is inflated in chunks up to the declared length
    or ``max_size``, whichever is smaller, never trusting the header, and the child is the SWF in FWS form
    (``FWS``, same version, declared length, inflated body). A candidate whose compressed body yields
    nothing is rejected. The FWS that is the whole payload is not carved (what it contains is searched).
    Output ``{"candidates" (examined), "carved"}``; each child's meta holds offset, signature, version,
    declared_length, compressed (None, "zlib" or "lzma"), size and truncated. Flags:
    ``limit:swf-candidates`` when ``max_candidates`` stopped the search, ``limit:swf-size`` when
    ``max_size`` (or what is left of ``max_total``) cut an SWF, ``limit:swf-total`` when ``max_total``
    bytes were carved before the search ended, ``corrupt:swf`` when the data or the compressed stream
    ended or broke before the declared length (the part recovered is still the child). A payload that
    starts with a compressed SWF from which nothing can be inflated raises.
    """

    name = "swf"
    version = "1.0"
    mimes = frozenset({"application/x-shockwave-flash", "application/vnd.adobe.flash.movie"})

    class Options(PluginOptions):
        max_candidates: int = Field(64, ge=0, description="Most FWS/CWS/ZWS candidates examined in one payload.")
        max_size: int = Field(64 * MiB, ge=8, description="Largest SWF carved or inflated, in bytes (cut beyond).")
        max_total: int = Field(256 * MiB, ge=8, description="Most bytes carved or inflated from one payload.")

    def accepts(self, payload: Payload) -> bool:
        return any(s in payload.content for s in SIGNATURES) and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        found, examined, capped, full = find(payload.content, options.max_candidates, options.max_size,
                                             options.max_total)
        compression = {"FWS": None, "CWS": "zlib", "ZWS": "lzma"}
        children = [Extracted(swf.content, filename=f"swf_{swf.offset:08x}.swf", meta={
                        "offset": swf.offset, "signature": swf.signature, "version": swf.version,
                        "declared_length": swf.declared_length, "compressed": compression[swf.signature],
                        "size": len(swf.content), "truncated": swf.truncated})
                    for swf in found]
        if payload.content[:3] in (b"CWS", b"ZWS") and plausible(payload.content, 0) and examined \
                and not (found and found[0].offset == 0):
            raise ValueError(f"{payload.content[:3].decode()} header at offset 0 but nothing could be inflated")
        flags = ["limit:swf-candidates"] if capped else []
        if any(swf.declared_length > len(swf.content) and not swf.corrupt for swf in found):
            flags.append("limit:swf-size")
        if full:
            flags.append("limit:swf-total")
        if any(swf.corrupt for swf in found):
            flags.append("corrupt:swf")
        return Result(data={"candidates": examined, "carved": len(children)}, children=children, flags=flags)
