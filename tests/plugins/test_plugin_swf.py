"""The ``swf`` carver on SWF files built here (FWS, zlib CWS, LZMA ZWS), embedded in other data."""

from __future__ import annotations

import lzma
import random
import struct
import zlib

import pytest

from stoq.plugin import Payload, Result
from stoq_plugins.swf import SwfPlugin

VERSION = 10


def body(size: int = 3000, seed: int = 1) -> bytes:
    """What follows an SWF's 8-byte header: a 550x400 frame RECT, 24 fps, 1 frame, a background
    colour, a DefineBinaryData tag (long form) of ``size`` bytes, ShowFrame and End."""
    rng = random.Random(seed)
    data = bytes(rng.choice(b"abcdefgh") for _ in range(size))  # compressible, not all zeros
    binary = struct.pack("<HIHI", (87 << 6) | 0x3F, len(data) + 6, 1, 0) + data
    return (bytes.fromhex("7800055f00000fa000") + bytes.fromhex("00180100")
            + struct.pack("<H", (9 << 6) | 3) + b"\xff\x00\x00" + binary + struct.pack("<HH", 1 << 6, 0))


def fws(inner: bytes, version: int = VERSION) -> bytes:
    return b"FWS" + bytes([version]) + struct.pack("<I", 8 + len(inner)) + inner


def cws(inner: bytes, version: int = VERSION, length: int | None = None) -> bytes:
    declared = 8 + len(inner) if length is None else length
    return b"CWS" + bytes([version]) + struct.pack("<I", declared) + zlib.compress(inner, 9)


def zws(inner: bytes, version: int = VERSION) -> bytes:
    """ZWS per the SWF spec: signature, version, uncompressed length, compressed length, the 5 LZMA
    property bytes, the LZMA data (taken from an .lzma "alone" stream: props, 8-byte size, data)."""
    alone = lzma.compress(inner, format=lzma.FORMAT_ALONE)
    props, data = alone[:5], alone[13:]
    return b"ZWS" + bytes([version]) + struct.pack("<II", 8 + len(inner), len(data)) + props + data


def noise(size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    return data.replace(b"WS", b"ws")  # no accidental signature


def scan(content: bytes, **options) -> Result:
    plugin = SwfPlugin(SwfPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "application/octet-stream", "0" * 64, 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def test_fws_cws_zws_embedded_in_random_bytes() -> None:
    one, two, three = body(3000, 1), body(5000, 2), body(7000, 3)
    parts = [noise(1000, 1), fws(one), noise(777, 2), cws(two, 9), noise(333, 3), zws(three, 13), noise(99, 4)]
    data = b"".join(parts)
    result = scan(data)
    assert [c.content for c in result.children] == [fws(one), fws(two, 9), fws(three, 13)]
    offsets = [len(b"".join(parts[:i])) for i in (1, 3, 5)]
    assert [c.meta for c in result.children] == [
        {"offset": offsets[0], "signature": "FWS", "version": 10, "declared_length": 8 + len(one),
         "compressed": None, "size": 8 + len(one), "truncated": False},
        {"offset": offsets[1], "signature": "CWS", "version": 9, "declared_length": 8 + len(two),
         "compressed": "zlib", "size": 8 + len(two), "truncated": False},
        {"offset": offsets[2], "signature": "ZWS", "version": 13, "declared_length": 8 + len(three),
         "compressed": "lzma", "size": 8 + len(three), "truncated": False}]
    assert result.children[1].filename == f"swf_{offsets[1]:08x}.swf"
    assert result.flags == [] and result.data == {"candidates": 3, "carved": 3}


def test_swf_inside_a_fake_png() -> None:
    inner = body(2000, 5)
    chunk = cws(inner)
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
           + b"\0" * 4 + struct.pack(">I", len(chunk)) + b"tEXt" + chunk + b"\0" * 4 + b"\0\0\0\0IEND\xaeB`\x82")
    [child] = scan(png).children
    assert child.content == fws(inner) and child.meta["offset"] == png.index(b"CWS")


def test_whole_fws_is_not_carved_but_searched_and_compressed_payload_is_inflated() -> None:
    inner = body(500, 6)
    outer = fws(body(100, 7) + cws(inner) + body(100, 8))
    result = scan(outer)
    assert [c.content for c in result.children] == [fws(inner)]
    assert result.data == {"candidates": 2, "carved": 1}
    [child] = scan(cws(inner)).children
    assert child.content == fws(inner) and child.meta["offset"] == 0


def test_lying_length_is_capped() -> None:
    zeros = cws(bytes(1 << 20), length=1 << 30)  # 1 KiB of zlib that inflates to 1 MiB, claiming 1 GiB
    result = scan(noise(50, 9) + zeros, max_size=65536)
    [child] = result.children
    assert len(child.content) == 65536 and child.content[:8] == b"FWS\x0a" + struct.pack("<I", 1 << 30)
    assert child.meta["truncated"] and result.flags == ["limit:swf-size"]
    lying = b"FWS\x0a" + struct.pack("<I", 1 << 30) + body(5000, 10)
    [child] = scan(noise(50, 10) + lying, max_size=4096).children
    assert child.content == lying[:4096]
    result = scan(noise(50, 10) + lying)  # the payload ends first: corrupt, the rest is kept
    assert result.children[0].content == lying and result.flags == ["corrupt:swf"]


def test_truncated_cws_and_zws_give_the_part_recovered() -> None:
    inner = body(20000, 11)
    for swf in (cws(inner), zws(inner)):
        result = scan(noise(100, 12) + swf[:len(swf) // 2])
        [child] = result.children
        assert result.flags == ["corrupt:swf"] and child.meta["truncated"]
        assert 8 < len(child.content) < 8 + len(inner) and fws(inner).startswith(child.content)


def test_broken_stream_at_offset_0_raises_and_embedded_is_rejected() -> None:
    broken = b"CWS\x0a" + struct.pack("<I", 5000) + b"\x78\x9c" + b"\xff" * 100
    with pytest.raises(ValueError, match="CWS"):
        scan(broken)
    assert scan(b"junk" + broken).children == []
    assert scan(b"junk" + broken).data == {"candidates": 1, "carved": 0}


def test_total_cap() -> None:
    bomb = cws(bytes(1 << 20))  # 1 KiB inflating to 1 MiB
    result = scan(bomb * 10, max_total=3 << 20)
    assert [len(c.content) for c in result.children] == [8 + (1 << 20)] * 2 + [(3 << 20) - 2 * (8 + (1 << 20))]
    assert result.flags == ["limit:swf-size", "limit:swf-total"]


def test_candidate_cap() -> None:
    data = b"".join(b"FWS\x0a" + struct.pack("<I", 4) + bytes(8) for _ in range(100))
    result = scan(data, max_candidates=10)
    assert result.flags == ["limit:swf-candidates"] and result.data == {"candidates": 10, "carved": 0}


def test_declines_payloads_without_a_signature() -> None:
    plugin = SwfPlugin()
    payload = Payload(b"no flash here", "t", None, "text/plain", "0" * 64, 0)
    assert not plugin.accepts(payload)
