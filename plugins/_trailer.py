"""Where a file's own data ends, for the ``trailer`` carver: what follows is data appended to it.

Each format is parsed from its structure, never found by searching for an end marker that its data may
hold: a JPEG segment by segment (entropy-coded data up to the next marker that is not a restart or a
stuffed ``FF 00``) to its EOI; a PNG chunk by chunk to IEND and its CRC; a GIF block by block to its
trailer byte ``3B``; a zip from the end-of-central-directory record whose central directory ends right
before it (an appended zip's own record does not), plus its comment; a PE to the end of its furthest
section (or its certificate table, as the ``pe`` carver sizes it). A PDF is the exception: its
incremental updates each end with ``%%EOF``, so its end is the last ``%%EOF`` and the end of line after it.
Each walk takes at most ``max_steps`` steps (segments, chunks, blocks, records); a walk cut short or a
structure that breaks gives no end (nothing is carved from a file whose end is not known).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from stoq_plugins._carve import measure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EOCD = b"PK\x05\x06"
#: JPEG markers without a length: TEM, RST0-7, SOI, EOI.
_BARE = {0x01, *range(0xD0, 0xD8), 0xD8}
#: The marker that ends entropy-coded data: ``FF`` (fill bytes too) then neither a stuffed ``00`` nor RSTn.
#: (Written with a literal first byte, not ``\xff+``, so that ``re`` skips ahead to each ``FF`` in C.)
_FILL = re.compile(rb"\xff+")
_MARKER = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")


@dataclass(frozen=True, slots=True)
class End:
    """The logical end of a file of ``format``: ``offset`` (None when the walk stopped at ``max_steps``
    or the structure broke)."""

    format: str
    offset: int | None
    capped: bool = False


def jpeg(data: bytes, max_steps: int) -> End:
    pos, steps = 2, 0
    while steps < max_steps:
        steps += 1
        fill = _FILL.match(data, pos)  # a marker, perhaps after fill bytes
        if fill is None or fill.end() >= len(data):
            return End("jpeg", None)
        pos = fill.end() - 1
        marker = data[pos + 1]
        if marker == 0xD9:
            return End("jpeg", pos + 2)
        if marker in _BARE:
            pos += 2
            continue
        if pos + 4 > len(data):
            return End("jpeg", None)
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2:
            return End("jpeg", None)
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to the next real marker
            found = _MARKER.search(data, pos)
            if found is None:
                return End("jpeg", None)
            pos = found.start()
    return End("jpeg", None, capped=True)


def png(data: bytes, max_steps: int) -> End:
    pos = len(PNG_SIGNATURE)
    for _ in range(max_steps):
        if pos + 12 > len(data):
            return End("png", None)
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        if kind == b"IEND":
            return End("png", pos if pos <= len(data) else None)
    return End("png", None, capped=True)


def _sub_blocks(data: bytes, pos: int, steps: list[int]) -> int | None:
    """The offset after a GIF data sub-block chain starting at ``pos`` (None if cut or too long)."""
    while steps[0] > 0:
        steps[0] -= 1
        if pos >= len(data):
            return None
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return None


def gif(data: bytes, max_steps: int) -> End:
    if len(data) < 13:
        return End("gif", None)
    packed = data[10]
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    steps = [max_steps]
    while steps[0] > 0:
        steps[0] -= 1
        if pos >= len(data):
            return End("gif", None)
        introducer = data[pos]
        if introducer == 0x3B:
            return End("gif", pos + 1)
        if introducer == 0x21:  # extension: label, then sub-blocks
            after = _sub_blocks(data, pos + 2, steps)
        elif introducer == 0x2C and pos + 10 <= len(data):  # image: descriptor, local table, LZW size, data
            local = data[pos + 9]
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            after = _sub_blocks(data, pos + 1, steps)
        else:
            return End("gif", None)
        if after is None:
            return End("gif", None, capped=steps[0] <= 0)
        pos = after
    return End("gif", None, capped=True)


def pdf(data: bytes) -> End:
    at = data.rfind(b"%%EOF")
    if at < 0:
        return End("pdf", None)
    end = at + 5
    if data[end:end + 2] == b"\r\n":
        return End("pdf", end + 2)
    return End("pdf", end + 1 if data[end:end + 1] in (b"\r", b"\n") else end)


def zip_end(data: bytes, max_steps: int) -> End:
    at = len(data)
    for _ in range(max_steps):
        at = data.rfind(EOCD, 0, at)
        if at < 0 or at + 22 > len(data):
            return End("zip", None)
        size, offset, comment = struct.unpack_from("<IIH", data, at + 12)
        if offset + size == at and at + 22 + comment <= len(data):
            return End("zip", at + 22 + comment)
        if offset == 0xFFFFFFFF:  # zip64: the record's fields are in the zip64 record, before it
            return End("zip", at + 22 + comment if at + 22 + comment <= len(data) else None)
    return End("zip", None, capped=True)


def pe(data: bytes) -> End:
    carved = measure(data, 0, len(data))
    return End("pe", None if carved is None or carved.declared_size > len(data) else carved.declared_size)


def format_of(data: bytes) -> str | None:
    """Which of the formats read here starts ``data`` (None if none)."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data[:4] in (b"PK\x03\x04", EOCD):
        return "zip"
    if data[:2] == b"MZ":
        return "pe"
    return None


def logical_end(data: bytes, max_steps: int) -> End | None:
    """The end of the file that starts ``data`` (None if it is none of the formats read here)."""
    fmt = format_of(data)
    if fmt in ("pdf", "pe"):
        return pdf(data) if fmt == "pdf" else pe(data)
    walk = {"jpeg": jpeg, "png": png, "gif": gif, "zip": zip_end}.get(fmt or "")
    return None if walk is None else walk(data, max_steps)
