"""Finding SWF files in other data and inflating them: the logic behind the ``swf`` carver.

A candidate is ``FWS``, ``CWS`` or ``ZWS``, a version byte (1 to ``MAX_VERSION``) and a 32-bit
little-endian length: the size of the whole uncompressed file, its 8-byte header included. The
length is never trusted: an ``FWS`` is cut at the data's end and at the size cap; the body of a ``CWS``
(a zlib stream at offset 8) or of a ``ZWS`` (an LZMA1 stream: compressed size at 8, 5 bytes of LZMA
properties at 12, data at 17) is inflated a chunk at a time and only up to the cap, so a lying header
costs at most the cap. Compressed SWFs are returned in their ``FWS`` form: the header with ``FWS``, the
same version and the declared length, then the inflated body.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass

SIGNATURES = (b"FWS", b"CWS", b"ZWS")
MAX_VERSION = 64
#: Smallest believable length: header (8), a 1-byte frame RECT, frame rate and count (4).
MIN_LENGTH = 13
CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Swf:
    """One SWF found at ``offset``: ``content`` is its FWS form, ``span`` the bytes it took in the data."""

    offset: int
    signature: str
    version: int
    declared_length: int
    content: bytes
    span: int
    corrupt: bool  # the data or the stream ended (or broke) before the declared length

    @property
    def truncated(self) -> bool:
        return len(self.content) < self.declared_length


def inflate_zlib(data: bytes, start: int, end: int, want: int) -> tuple[bytes, int, bool]:
    """Up to ``want`` bytes of the zlib stream in ``data[start:end]``: (output, input used, broken)."""
    inflater = zlib.decompressobj()
    out = bytearray()
    pos, pending = start, b""
    try:
        while len(out) < want and not inflater.eof:
            if not pending:
                if pos >= end:
                    break
                pending = data[pos:min(pos + CHUNK, end)]
                pos += len(pending)
            out += inflater.decompress(pending, want - len(out))
            pending = inflater.unconsumed_tail
    except zlib.error:
        return bytes(out), pos - start, True
    return bytes(out), pos - start - len(pending) - len(inflater.unused_data), False


def inflate_lzma(data: bytes, start: int, end: int, want: int, props: bytes) -> tuple[bytes, int, bool]:
    """Up to ``want`` bytes of the raw LZMA1 stream in ``data[start:end]`` with the 5 property bytes
    ``props``: (output, input used, broken). The dictionary is never larger than the output wanted."""
    lc_lp_pb, dict_size = struct.unpack("<BI", props)
    if lc_lp_pb >= 9 * 5 * 5:
        return b"", 0, True
    pb, rest = divmod(lc_lp_pb, 45)
    lp, lc = divmod(rest, 9)
    if lc + lp > 4:  # liblzma's LZMA1 limit
        return b"", 0, True
    dict_size = min(max(dict_size, 4096), max(want, 4096))
    inflater = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
        {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": dict_size}])
    out = bytearray()
    pos = start
    try:
        while len(out) < want and not inflater.eof:
            if inflater.needs_input:
                if pos >= end:
                    break
                chunk = data[pos:min(pos + CHUNK, end)]
                pos += len(chunk)
            else:
                chunk = b""
            out += inflater.decompress(chunk, want - len(out))
    except lzma.LZMAError:
        return bytes(out), pos - start, True
    return bytes(out), pos - start - len(inflater.unused_data), False


def plausible(data: bytes, offset: int) -> bool:
    """Whether an SWF header (signature, version 1 to ``MAX_VERSION``, length) is at ``offset``."""
    return (len(data) >= offset + 8 and data[offset:offset + 3] in SIGNATURES
            and 1 <= data[offset + 3] <= MAX_VERSION and struct.unpack_from("<I", data, offset + 4)[0] >= MIN_LENGTH)


def measure(data: bytes, offset: int, max_size: int) -> Swf | None:
    """The SWF at ``offset`` in its FWS form, at most ``max_size`` bytes; None when the header is not
    believable or a compressed body yields nothing."""
    if not plausible(data, offset):
        return None
    signature, version = data[offset:offset + 3], data[offset + 3]
    length = struct.unpack_from("<I", data, offset + 4)[0]
    target = min(length, max_size)
    if signature == b"FWS":
        content = data[offset:offset + target]
        return Swf(offset, "FWS", version, length, content, len(content), len(content) < target)
    header = b"FWS" + data[offset + 3:offset + 8]
    want = max(target - 8, 0)
    if signature == b"CWS":
        cmf_flg = data[offset + 8:offset + 10]
        if len(cmf_flg) < 2 or cmf_flg[0] & 0x0F != 8 or int.from_bytes(cmf_flg, "big") % 31:
            return None
        body, used, broken = inflate_zlib(data, offset + 8, len(data), want)
        span = 8 + used
    else:
        if offset + 17 > len(data):
            return None
        packed = struct.unpack_from("<I", data, offset + 8)[0]
        end = offset + 17 + packed if 0 < packed <= len(data) - offset - 17 else len(data)
        body, used, broken = inflate_lzma(data, offset + 17, end, want, data[offset + 12:offset + 17])
        span = 17 + used
    if not body:
        return None
    return Swf(offset, signature.decode(), version, length, header + body, span, broken or len(body) < want)


def find(data: bytes, max_candidates: int, max_size: int, max_total: int) -> tuple[list[Swf], int, bool, bool]:
    """The SWFs in ``data``: (found, candidates examined, candidate cap reached, total cap reached).
    Each is at most ``max_size`` bytes and all together at most ``max_total``. The search goes on after
    each SWF found; an FWS making up the whole of ``data`` is not returned but searched."""
    found: list[Swf] = []
    examined = total = 0
    at = 0
    hits = {s: data.find(s) for s in SIGNATURES}
    while True:
        hits = {s: data.find(s, at) if 0 <= h < at else h for s, h in hits.items()}
        if all(h < 0 for h in hits.values()):
            return found, examined, False, False
        at = min(h for h in hits.values() if h >= 0)
        if examined >= max_candidates or total >= max_total:
            return found, examined, examined >= max_candidates, total >= max_total
        examined += 1
        swf = measure(data, at, min(max_size, max(max_total - total, 8)))
        if swf is None:
            at += 1
        elif at == 0 and swf.signature == "FWS" and swf.span == len(data):  # the payload itself
            at += 8
        else:
            found.append(swf)
            total += len(swf.content)
            at += max(swf.span, 1)
