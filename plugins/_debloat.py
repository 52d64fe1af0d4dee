"""Finding the junk that pads a bloated PE, and the PE without it: the logic behind the ``debloat`` carver.

Bloat is hundreds of MB of bytes that carry nothing, appended (the overlay) or inside the last section,
so that scanners and sandboxes skip the file for its size. Junk is found from the end backwards: a
pattern that repeats (one byte, or up to 4 KiB) to the end is followed back to its exact start, comparing
each block with the block one period later (slice comparisons: C speed); before it, MiB chunks that zlib
(level 1) shrinks ``ratio`` times or more are junk too. Real overlays and sections (compressed installer
data, code) do not shrink that much, so the walk stops where they end. Padding made of random words or
random bytes is not junk by this measure and is left alone.

The PE without its bloat is its headers and sections up to where the junk starts: an overlay is cut there
(what precedes the junk in it is kept, and a zip, 7z or cab at its start is kept whole); a last section is cut there, rounded up to ``FileAlignment``, and
its ``SizeOfRawData`` rewritten. A section that is not the last thing in the file (an overlay or a
certificate table after it) is not cut.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import pefile

from stoq_plugins._carve import headers_span, measure
from stoq_plugins.decompress.formats import declared_size

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Debloated:
    """A PE without its junk: ``content``, where the junk was (``overlay`` or ``section``), its offset and
    size, and whether the walk stopped at ``max_scan`` bytes before the junk's start was found."""

    content: bytes
    where: str
    junk_offset: int
    junk_size: int
    capped: bool


def period(tail: bytes, max_period: int) -> int | None:
    """The shortest period (at most ``max_period``) with which ``tail`` repeats, if any."""
    probe = tail[:32]
    at = tail.find(probe, 1)
    while 0 < at <= max_period:
        if tail[at:] == tail[:-at]:
            return at
        at = tail.find(probe, at + 1)
    return None


def periodic_start(data: bytes, start: int, end: int, step: int, max_scan: int) -> tuple[int, bool]:
    """The first offset from which ``data[:end]`` repeats with period ``step`` (back to ``start`` at most):
    blocks are compared with the block one period later, halved at a mismatch down to one byte."""
    pos, block = max(start, end - step), CHUNK
    while pos > start:
        if end - pos >= max_scan:
            return pos, True
        size = min(block, pos - start)
        if data[pos - size:pos] == data[pos - size + step:pos + step]:
            pos -= size
        elif size == 1:
            break
        else:
            block = size // 2
    return pos, False


def junk_start(data: bytes, start: int, end: int, ratio: float, max_scan: int) -> tuple[int, bool]:
    """Where the junk ending at ``end`` begins (``end`` if there is none), back to ``start`` at most; True
    if ``max_scan`` bytes were examined before the walk got there. A repeated pattern (a single byte
    included) is followed to its exact start; then chunks zlib shrinks ``ratio`` times are junk too."""
    step = period(data[max(start, end - (1 << 16)):end], 4096)
    pos, capped = periodic_start(data, start, end, step, max_scan) if step else (end, False)
    while pos > start and not capped:
        if end - pos >= max_scan:
            return pos, True
        size = min(CHUNK, pos - start)
        if len(zlib.compress(data[pos - size:pos], 1)) * ratio > size:
            break
        pos -= size
    return pos, capped


def archive_end(data: bytes, start: int) -> int:
    """The end of a zip, 7z or cab archive starting the overlay at ``start``, as its own records say (a zip:
    its last end-of-central-directory record and comment; 7z, cab: the size in the header), else ``start``.
    Its last bytes may equal the padding (a zip's zero comment length before zeros): they are kept."""
    if data[start:start + 4] == b"PK\x03\x04":
        at = data.rfind(b"PK\x05\x06", start)
        if at >= 0 and at + 22 <= len(data):
            return at + 22 + int.from_bytes(data[at + 20:at + 22], "little")
        return start
    size = declared_size(data[start:start + 32])
    return start if size is None else min(start + size, len(data))


def debloat(data: bytes, min_bloat: int, ratio: float, max_scan: int) -> Debloated | None:
    """The PE ``data`` without the junk of at least ``min_bloat`` bytes that ends it (None if none)."""
    carved = measure(data, 0, len(data))
    span = headers_span(data, 0)
    if carved is None or span is None:
        return None
    if carved.declared_size < len(data):  # an overlay
        cut, capped = junk_start(data, carved.declared_size, len(data), ratio, max_scan)
        cut = max(cut, archive_end(data, carved.declared_size))
        if len(data) - cut < min_bloat:
            return None
        return Debloated(data[:cut], "overlay", cut, len(data) - cut, capped)
    pe = pefile.PE(data=data[:span], fast_load=True)
    last = max(pe.sections, key=lambda s: s.PointerToRawData + s.SizeOfRawData, default=None)
    if last is None or last.PointerToRawData + last.SizeOfRawData != len(data):
        return None
    cut, capped = junk_start(data, last.PointerToRawData, len(data), ratio, max_scan)
    alignment = max(pe.OPTIONAL_HEADER.FileAlignment, 1)
    raw = -(-(cut - last.PointerToRawData) // alignment) * alignment
    if len(data) - (last.PointerToRawData + raw) < min_bloat:
        return None
    header = bytearray(data[:last.PointerToRawData + raw])
    struct.pack_into("<I", header, last.get_file_offset() + 16, raw)  # SizeOfRawData
    return Debloated(bytes(header), "section", last.PointerToRawData + raw, len(data) - last.PointerToRawData - raw,
                     capped)
