"""The ``xdp`` carver: the PDF an Adobe XML Data Package holds as base64 ``<chunk>`` elements."""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import Field

from stoq.plugin import CarverPlugin, Extracted, Payload, PluginOptions, Result

MiB = 1 << 20
MARKERS = (b"http://ns.adobe.com/xdp/", b"<xdp:xdp")
#: How far from the start the XDP namespace or root element is looked for.
HEAD = 4096
#: A chunk element (any namespace prefix): text, at most one CDATA section, text. No part can run past
#: the next ``<``/``>``/``]``, so a search costs one pass over the payload whatever it holds.
CHUNK = re.compile(rb"<(?:[\w.-]+:)?chunk(?:\s[^<>]*)?>([^<]*)(?:<!\[CDATA\[([^\]]*)\]\]>([^<]*))?"
                   rb"</(?:[\w.-]+:)?chunk\s*>")
WHITESPACE = b" \t\r\n\f\v"
INVALID = re.compile(rb"[^A-Za-z0-9+/=]")
#: Between a run of padding and what follows: where chunks encoded one by one were joined.
PADDED = re.compile(rb"(?<==)(?=[^=])")


def decode(text: bytes) -> tuple[bytes, bool]:
    """``text`` (whitespace already removed) base64-decoded: (bytes, whole). Segments ending in padding
    may follow each other; when the text is not valid base64 the bytes are those of the whole quads
    before the first fault."""
    try:
        return base64.b64decode(text, validate=True), True
    except binascii.Error:
        pass
    bad = INVALID.search(text)
    whole = bad is None
    out = bytearray()
    for part in PADDED.split(text if bad is None else text[:bad.start()]):
        usable = len(part) - len(part) % 4
        try:
            out += base64.b64decode(part[:usable], validate=True)
        except binascii.Error:  # padding in the wrong place
            out += base64.b64decode(part[:part.index(b"=") // 4 * 4], validate=True)
            return bytes(out), False
        if usable < len(part):
            return bytes(out), False
    return bytes(out), whole


class XdpPlugin(CarverPlugin):
    """Carves the PDF document embedded in an XDP (XML Data Package) as base64 ``<chunk>`` elements.

    The XML is never parsed: no DTD is read and no entity expanded (a billion-laughs XDP costs one
    pass). The text of every ``<chunk>`` element (any namespace prefix, plain or one CDATA section) is
    taken in document order, whitespace removed, concatenated and base64-decoded strictly; chunks padded
    one by one are accepted. Only UTF-8 (ASCII-compatible) XDP is read. The PDF is one child
    (``xdp.pdf``, meta ``chunks``, ``size``). Output ``{"chunks", "size"}``. Flags: ``limit:xdp-size``
    when the base64 text was cut to ``max_size`` decoded bytes, ``limit:xdp-chunks`` when chunks past
    ``max_chunks`` were left out, ``corrupt:xdp`` when the text is not valid base64 (the child is what
    the whole quads before the first fault decode to). Invalid chunks that decode to nothing raise; no
    chunks, or empty ones, give no child. Accepted: the XDP namespace or ``<xdp:xdp`` in the first 4 KiB.
    """

    name = "xdp"
    version = "1.0"

    class Options(PluginOptions):
        max_size: int = Field(64 * MiB, ge=1, description="Largest PDF decoded, in bytes (larger ones are cut).")
        max_chunks: int = Field(100_000, ge=0, description="Most <chunk> elements read from one XDP.")

    def accepts(self, payload: Payload) -> bool:
        head = payload.content[:HEAD]
        return any(m in head for m in MARKERS) and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        flags: list[str] = []
        budget = -(-options.max_size // 3) * 4  # base64 characters for max_size bytes
        parts: list[bytes] = []
        used = chunks = 0
        for match in CHUNK.finditer(payload.content):
            if chunks >= options.max_chunks:
                flags.append("limit:xdp-chunks")
                break
            chunks += 1
            text = b"".join(part or b"" for part in match.groups()).translate(None, WHITESPACE)
            if used + len(text) > budget:
                parts.append(text[:budget - used])
                flags.append("limit:xdp-size")
                break
            parts.append(text)
            used += len(text)
        pdf, whole = decode(b"".join(parts))
        pdf = pdf[:options.max_size]
        if not whole:
            flags.append("corrupt:xdp")
        if not pdf and not whole:
            raise ValueError(f"{chunks} <chunk> elements but no base64 text decoded")
        children = [Extracted(pdf, filename="xdp.pdf", meta={"chunks": chunks, "size": len(pdf)})] if pdf else []
        return Result(data={"chunks": chunks, "size": len(pdf)}, children=children, flags=flags)
