"""The ``pe`` carver on corpus documents and executables, and on PEs placed inside data here."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pefile

from stoq.plugin import Payload, Result
from stoq_plugins.pe import PePlugin


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan(content: bytes, **options) -> Result:
    plugin = PePlugin(PePlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "application/octet-stream", sha(content), 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def ole_stream(data: bytes, name: str) -> tuple[bytes, list[int]]:
    """A stream of an OLE2 (CFB) file by name, read along its FAT chain: (bytes, file offset of each
    sector). Enough CFB for this sample: 512-byte sectors, one DIFAT in the header, a regular stream."""
    sector = 1 << struct.unpack_from("<H", data, 30)[0]
    fat_sectors, directory_start = struct.unpack_from("<II", data, 44)
    fat: list[int] = []
    for number in struct.unpack_from("<109I", data, 76)[:fat_sectors]:
        fat += struct.unpack_from(f"<{sector // 4}I", data, (number + 1) * sector)

    def chain(start: int) -> list[int]:
        out = []
        while start < 0xFFFFFFFA:
            out.append(start)
            start = fat[start]
        return out

    directory = b"".join(data[(n + 1) * sector:(n + 2) * sector] for n in chain(directory_start))
    for at in range(0, len(directory), 128):
        entry = directory[at:at + 128]
        length = struct.unpack_from("<H", entry, 64)[0]
        if entry[:max(length - 2, 0)].decode("utf-16-le") == name:
            start, size = struct.unpack_from("<IQ", entry, 116)
            offsets = [(n + 1) * sector for n in chain(start)]
            return b"".join(data[o:o + sector] for o in offsets)[:size], offsets
    raise KeyError(name)


def ole10native(stream: bytes) -> tuple[bytes, int]:
    """The embedded file of an ``\\x01Ole10Native`` stream (MS-OLEDS "packager" format), and where it starts."""
    at = 6  # total size (4), flags (2)
    for _ in range(2):  # label, source path: NUL-terminated
        at = stream.index(b"\x00", at) + 1
    at += 4  # reserved
    at += 4 + struct.unpack_from("<I", stream, at)[0]  # temporary path, length-prefixed
    size = struct.unpack_from("<I", stream, at)[0]
    return stream[at + 4:at + 4 + size], at + 4


def test_pe_embedded_in_an_ole_document(corpus: Path) -> None:
    doc = (corpus / "test_pe_object.doc").read_bytes()
    stream, sectors = ole_stream(doc, "\x01Ole10Native")
    embedded, start = ole10native(stream)
    # The stream's sectors are consecutive in the file, so the embedded PE lies there contiguously.
    assert sectors == list(range(sectors[0], sectors[0] + 512 * len(sectors), 512))
    offset = sectors[0] + start
    assert doc[offset:offset + len(embedded)] == embedded and embedded[:2] == b"MZ"
    result = scan(doc)
    [child] = result.children
    assert sha(child.content) == sha(embedded)
    assert child.meta == {"offset": offset, "size": len(embedded), "is_dll": False,
                          "machine": "IMAGE_FILE_MACHINE_AMD64", "truncated": False}
    assert child.filename == f"pe_{offset:08x}.exe"
    assert result.data == {"candidates": 1, "rejected": 0, "carved": 1} and result.flags == []


def test_pe_appended_to_an_image(corpus: Path) -> None:
    image, exe = (corpus / "test.png").read_bytes(), (corpus / "test.exe").read_bytes()
    result = scan(image + exe + b"\x00trailing")
    [child] = result.children
    assert child.content == exe and child.meta["offset"] == len(image)
    assert result.data["carved"] == 1
    assert result.data["rejected"] == image.count(b"MZ")  # the image's own "MZ" bytes are not PEs


def test_xor_exe_is_one_pe_without_overlay(corpus: Path) -> None:
    data = (corpus / "test_xor.exe").read_bytes()
    pe = pefile.PE(data=data)
    assert pe.get_overlay_data_start_offset() is None  # nothing appended: no overlay to carve
    result = scan(data)
    assert result.children == []  # the file itself is not carved again
    assert result.data == {"candidates": 3, "rejected": 2, "carved": 0}
    text = next(s for s in pe.sections if s.Name.startswith(b".text"))
    others = [i for i in range(1, len(data)) if data.startswith(b"MZ", i)]
    # the two other "MZ" are immediates of its own code (cmp word [..], 'MZ'), not headers
    assert all(text.PointerToRawData <= i < text.PointerToRawData + text.SizeOfRawData for i in others)
    assert len(others) == 2


def test_overlay_is_left_out_and_nested_pe_is_carved(corpus: Path) -> None:
    exe = (corpus / "test.exe").read_bytes()
    result = scan(exe + b"OVERLAY" * 100)
    assert [c.content for c in result.children] == [exe]
    assert result.children[0].meta["offset"] == 0
    two = scan(exe + exe)  # a PE followed by another: both, the second starting where the first ends
    assert [(c.meta["offset"], c.content) for c in two.children] == [(0, exe), (len(exe), exe)]


def test_certificate_table_that_follows_is_included(corpus: Path) -> None:
    pe = pefile.PE(data=(corpus / "test.exe").read_bytes())
    security = pe.OPTIONAL_HEADER.DATA_DIRECTORY[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]]
    security.VirtualAddress, security.Size = len(pe.__data__), 64
    signed = bytes(pe.write()) + b"\x30" * 64
    result = scan(b"prefix " + signed + b"unrelated tail")
    assert [c.content for c in result.children] == [signed]
    assert result.children[0].meta["size"] == len(pe.__data__) + 64


def test_dll_truncated_and_capped(corpus: Path) -> None:
    dll = bytearray((corpus / "test.exe").read_bytes())
    characteristics = struct.unpack_from("<I", dll, 0x3C)[0] + 22
    dll[characteristics:characteristics + 2] = struct.pack("<H", struct.unpack_from("<H", dll, characteristics)[0]
                                                           | 0x2000)
    assert pefile.PE(data=bytes(dll)).is_dll()
    cut = b"junk" + bytes(dll[:3000])
    result = scan(cut)
    [child] = result.children
    assert child.content == bytes(dll[:3000]) and child.filename == "pe_00000004.dll"
    assert child.meta == {"offset": 4, "size": 3000, "is_dll": True, "machine": "IMAGE_FILE_MACHINE_AMD64",
                          "truncated": True}
    assert result.flags == []
    capped = scan(b"junk" + bytes(dll), max_size=1000)
    assert capped.children[0].content == bytes(dll[:1000]) and capped.flags == ["limit:pe-size"]


def test_malformed_candidates_are_rejected_not_raised(corpus: Path) -> None:
    exe = (corpus / "test.exe").read_bytes()
    lfanew = struct.unpack_from("<I", exe, 0x3C)[0]
    hostile = [
        b"MZ",                                                     # too short for a DOS header
        b"MZ" + b"\x00" * 58 + struct.pack("<I", 0xFFFFFFF0),    # e_lfanew far away
        b"MZ" + b"\x00" * 58 + struct.pack("<I", 0x40) + b"NE\x00\x00" + b"\x00" * 300,  # not PE\0\0
        exe[:lfanew + 24] + b"\xff" * 16,                       # PE\0\0, then headers cut short
    ]
    for blob in hostile:
        result = scan(b"data " + blob)
        assert result.children == [] and result.data["rejected"] == 1, blob[:70]


def test_candidate_cap() -> None:
    data = b"MZ.." * 100
    result = scan(data, max_candidates=10)
    assert result.data == {"candidates": 10, "rejected": 10, "carved": 0}
    assert result.flags == ["limit:pe-candidates"]
    assert scan(data).flags == ["limit:pe-candidates"] and scan(data).data["candidates"] == 64
    assert scan(b"MZ.." * 64).flags == []


def test_accepts_needs_mz() -> None:
    plugin = PePlugin()
    assert not plugin.accepts(Payload(b"no executable here", "t", None, "text/plain", "", 0))
    assert plugin.accepts(Payload(b"...MZ", "t", None, "text/plain", "", 0))
