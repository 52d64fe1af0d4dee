"""The ``peinfo`` worker, compared with pefile's own answers on corpus files and a PE built here."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from pathlib import Path

import pefile
import pytest

from stoq.model import clean
from stoq_plugins.peinfo import PeinfoPlugin


@pytest.fixture
def plugin() -> PeinfoPlugin:
    p = PeinfoPlugin()
    p.setup()
    return p


def expected_imports(pe: pefile.PE) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", []):
        found.setdefault(entry.dll.decode(), []).extend(
            imp.name.decode() if imp.name else f"ord{imp.ordinal}" for imp in entry.imports)
    return found


def build_dll(exports: list[bytes], overlay: bytes, stamp: int = 1_600_000_000) -> bytes:
    """A minimal PE32 DLL: headers, one `.edata` section holding an export directory, then ``overlay``."""
    rva, raw = 0x1000, 0x200
    names_at = rva + 40 + 4 * len(exports) * 2 + 2 * len(exports) + 16
    strings, name_rvas = b"", []
    for name in [b"demo.dll", *exports]:
        name_rvas.append(names_at + len(strings))
        strings += name + b"\x00"
    functions = b"".join(struct.pack("<I", 0x1000 + i) for i in range(len(exports)))
    names = b"".join(struct.pack("<I", r) for r in name_rvas[1:])
    ordinals = b"".join(struct.pack("<H", i) for i in range(len(exports)))
    directory = struct.pack("<IIHHIIIIIII", 0, stamp, 0, 0, name_rvas[0], 1, len(exports), len(exports),
                            rva + 40, rva + 40 + len(functions), rva + 40 + len(functions) + len(names))
    body = directory + functions + names + ordinals
    body = body + b"\x00" * (names_at - rva - len(body)) + strings
    section = body.ljust((len(body) + 0x1FF) // 0x200 * 0x200, b"\x00")
    dos = b"MZ" + b"\x00" * 58 + struct.pack("<I", 0x40)
    file_header = struct.pack("<HHIIIHH", 0x14C, 1, stamp, 0, 0, 224, 0x2102)  # EXECUTABLE|32BIT|DLL
    data_dirs = struct.pack("<II", rva, len(body)) + b"\x00" * 8 * 15
    optional = struct.pack("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", 0x10B, 14, 0, len(section), 0, 0, rva, rva, rva,
                           0x10000000, 0x1000, 0x200, 6, 0, 0, 0, 6, 0, 0, rva + len(section), raw, 0, 2, 0x140,
                           0x100000, 0x1000, 0x100000, 0x1000, 0, 16) + data_dirs
    section_header = struct.pack("<8sIIIIIIHHI", b".edata", len(body), rva, len(section), raw, 0, 0, 0, 0, 0x40000040)
    headers = (dos + b"PE\x00\x00" + file_header + optional + section_header).ljust(raw, b"\x00")
    return headers + section + overlay


@pytest.mark.parametrize("name", ["test.exe", "test_xor.exe"])
def test_corpus_pe_matches_pefile(plugin: PeinfoPlugin, corpus: Path, make_payload, name: str) -> None:
    data = (corpus / name).read_bytes()
    payload = make_payload(data, "application/x-dosexec", name)
    assert plugin.accepts(payload)
    result = plugin.scan(payload, plugin.options)
    out = result.data
    pe = pefile.PE(data=data)
    assert out["imphash"] == pe.get_imphash()
    assert [s["name"] for s in out["sections"]] == [s.Name.rstrip(b"\x00").decode() for s in pe.sections]
    assert [(s["virtual_address"], s["virtual_size"], s["raw_size"], s["md5"]) for s in out["sections"]] == [
        (s.VirtualAddress, s.Misc_VirtualSize, s.SizeOfRawData, s.get_hash_md5()) for s in pe.sections]
    assert [s["entropy"] for s in out["sections"]] == pytest.approx([s.get_entropy() for s in pe.sections])
    assert out["machine"] == pefile.MACHINE_TYPE[pe.FILE_HEADER.Machine]
    assert out["timestamp"] == pe.FILE_HEADER.TimeDateStamp
    assert out["compile_time"] == datetime.fromtimestamp(pe.FILE_HEADER.TimeDateStamp, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert out["subsystem"] == pefile.SUBSYSTEM_TYPE[pe.OPTIONAL_HEADER.Subsystem]
    assert (out["entry_point"], out["image_base"]) == (pe.OPTIONAL_HEADER.AddressOfEntryPoint,
                                                       pe.OPTIONAL_HEADER.ImageBase)
    assert (out["is_dll"], out["is_exe"]) == (pe.is_dll(), pe.is_exe())
    assert "IMAGE_FILE_EXECUTABLE_IMAGE" in out["characteristics"]
    assert out["imports"] == expected_imports(pe)
    assert out["exports"] == []
    start = pe.get_overlay_data_start_offset()
    assert out["overlay"] == (None if start is None else {"offset": start, "size": len(data) - start})
    assert out["warnings"] == pe.get_warnings() and out["warning_count"] == len(pe.get_warnings())
    assert result.flags == (["pe:malformed"] if pe.get_warnings() else [])
    assert clean(out) == out  # already plain JSON


def test_xor_exe_imports_known_functions(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    out = plugin.scan(make_payload((corpus / "test_xor.exe").read_bytes()), plugin.options).data
    assert out["machine"] == "IMAGE_FILE_MACHINE_AMD64" and out["pe32_plus"] is True
    assert "GetCurrentProcessId" in out["imports"]["KERNEL32.dll"]
    assert out["imphash"] == pefile.PE(str(corpus / "test_xor.exe")).get_imphash() != ""


def test_import_cap(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = (corpus / "test_xor.exe").read_bytes()
    result = plugin.scan(make_payload(data), PeinfoPlugin.Options(max_imports=12))
    flat = [(dll, fn) for dll, fns in expected_imports(pefile.PE(data=data)).items() for fn in fns]
    assert len(flat) > 12
    assert [(dll, fn) for dll, fns in result.data["imports"].items() for fn in fns] == flat[:12]
    assert result.flags == ["limit:pe-imports"]


def test_built_dll_exports_and_overlay(plugin: PeinfoPlugin, make_payload) -> None:
    names = [b"Alpha", b"Beta", b"Gamma", b"Delta"]
    data = build_dll(names, overlay=b"OVERLAY!" * 10)
    pe = pefile.PE(data=data)
    result = plugin.scan(make_payload(data), plugin.options)
    out = result.data
    assert out["is_dll"] is True and out["is_exe"] is False and out["pe32_plus"] is False
    assert out["machine"] == "IMAGE_FILE_MACHINE_I386"
    assert out["compile_time"] == "2020-09-13T12:26:40Z"
    assert out["exports"] == [{"name": s.name.decode(), "ordinal": s.ordinal, "address": s.address}
                              for s in pe.DIRECTORY_ENTRY_EXPORT.symbols]
    assert [e["name"] for e in out["exports"]] == ["Alpha", "Beta", "Gamma", "Delta"]
    assert out["overlay"] == {"offset": pe.get_overlay_data_start_offset(), "size": 80}
    assert out["overlay"]["offset"] == len(data) - 80
    assert [s["name"] for s in out["sections"]] == [".edata"]
    assert result.flags == ["pe:malformed"] and out["warnings"] == pe.get_warnings()  # mostly zero bytes

    capped = plugin.scan(make_payload(data), PeinfoPlugin.Options(max_exports=2))
    assert [e["name"] for e in capped.data["exports"]] == ["Alpha", "Beta"]
    assert capped.flags == ["limit:pe-exports", "pe:malformed"]


def test_accepts_only_mz(plugin: PeinfoPlugin, make_payload) -> None:
    assert not plugin.accepts(make_payload(b"\x7fELF\x02\x01\x01"))
    assert not plugin.accepts(make_payload(b""))
    assert plugin.accepts(make_payload(b"MZ"))


def test_not_a_pe_gives_the_parse_error_and_a_flag(plugin: PeinfoPlugin, make_payload) -> None:
    for data in (b"MZ" + b"\x00" * 100, b"MZ" + b"\x00" * 58 + struct.pack("<I", 0x40) + b"NOPE" + b"\x00" * 300):
        with pytest.raises(pefile.PEFormatError) as raised:
            pefile.PE(data=data)
        result = plugin.scan(make_payload(data), plugin.options)
        assert (result.data, result.flags) == ({"parse_error": str(raised.value)}, ["pe:malformed"])
