"""The ``debloat`` carver on corpus PEs padded here (12 MiB, thresholds lowered to match): zeros or a repeated
pattern in the overlay, after a real appended zip, or inside an inflated last section; the child is the PE
as it was before the padding (checked byte for byte, and by pefile), and the payload is flagged."""

from __future__ import annotations

import random
import struct

import pefile
import pytest

from helpers import CORPUS, make_zip
from stoq.plugin import Result
from stoq_plugins._debloat import period
from stoq_plugins.debloat import DebloatPlugin

MiB = 1 << 20
PAD = 12 * MiB
OPTIONS = {"min_bloat": 8 * MiB}
HIDDEN = make_zip({"payload.txt": b"the dropper's real payload\n" * 10})


def scan(make_payload, content: bytes, **options) -> Result:
    plugin = DebloatPlugin(DebloatPlugin.Options(**{**OPTIONS, **options}))
    payload = make_payload(content, "application/vnd.microsoft.portable-executable", "bloated.exe")
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def junk(kind: str) -> bytes:
    if kind == "zeros":
        return bytes(PAD)
    if kind == "pattern":  # a short pattern, followed to its exact start
        return (b"junk\x90\xcc\x01" * (PAD // 6 + 1))[:PAD]
    block = random.Random(7).randbytes(8192)  # a period too long to look for: found by zlib, a MiB at a time
    return (block * (PAD // 8192))[:PAD]


@pytest.mark.parametrize("kind", ["zeros", "pattern", "long-period"])
@pytest.mark.parametrize("overlay", [b"", HIDDEN], ids=["no-overlay", "zip-overlay"])
def test_overlay_junk_is_removed(make_payload, kind: str, overlay: bytes) -> None:
    host = (CORPUS / "test.exe").read_bytes() + overlay
    bloated = host + junk(kind)
    start = pefile.PE(data=bloated).get_overlay_data_start_offset()  # the reference: where the overlay starts
    assert start == len(host) - len(overlay)
    result = scan(make_payload, bloated)
    assert result.flags == ["pe:bloated"]
    assert result.data == {"bloated": True, "where": "overlay", "junk_offset": len(host), "junk_size": PAD}
    [child] = result.children
    assert child.content == host and child.filename == "bloated.exe.debloated"
    assert child.meta == {"where": "overlay", "junk_offset": len(host), "junk_size": PAD, "original_size": len(bloated)}


def test_an_inflated_last_section_is_cut_and_its_header_rewritten(make_payload) -> None:
    original = (CORPUS / "test.exe").read_bytes()
    pe = pefile.PE(data=original)
    last = pe.sections[-1]
    assert last.PointerToRawData + last.SizeOfRawData == len(original)
    bloated = bytearray(original + bytes(PAD))
    struct.pack_into("<I", bloated, last.get_file_offset() + 16, last.SizeOfRawData + PAD)
    assert pefile.PE(data=bytes(bloated)).sections[-1].SizeOfRawData == last.SizeOfRawData + PAD
    assert pefile.PE(data=bytes(bloated)).get_overlay_data_start_offset() is None  # no overlay: in the section
    result = scan(make_payload, bytes(bloated))
    assert result.flags == ["pe:bloated"] and result.data["where"] == "section"
    [child] = result.children
    assert child.content == original  # the section back to its size (its own zeros kept to the alignment)
    assert [(s.Name, s.SizeOfRawData) for s in pefile.PE(data=child.content).sections] == [
        (s.Name, s.SizeOfRawData) for s in pe.sections]


def test_real_data_small_padding_and_caps(make_payload) -> None:
    host = (CORPUS / "test.exe").read_bytes()
    noise = random.Random(1).randbytes(PAD)  # an overlay of incompressible data: not junk
    assert scan(make_payload, host + noise).children == []
    small = scan(make_payload, host + bytes(PAD), min_bloat=PAD + 1)  # less junk than min_bloat
    assert small.children == [] and small.flags == [] and small.data["bloated"] is False
    assert not DebloatPlugin(DebloatPlugin.Options(min_bloat=PAD)).accepts(
        make_payload(host + bytes(100), "application/x-dosexec"))  # smaller than min_bloat: not even parsed
    capped = scan(make_payload, host + bytes(PAD), max_scan=10 * MiB)  # the walk stops: junk before it is kept
    assert capped.flags == ["pe:bloated", "limit:debloat-scan"]
    assert 10 * MiB <= capped.data["junk_size"] <= 10 * MiB + 1
    assert capped.children[0].content == host + bytes(PAD - capped.data["junk_size"])
    assert period(b"ab" * 1000, 16) == 2 and period(random.Random(2).randbytes(4096), 64) is None
