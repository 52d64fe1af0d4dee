"""``peinfo``'s resources, version info, debug directory, Rich header, TLS callbacks, Authenticode
signature and .NET flag, compared with pefile's own answers (and objdump's for the PDB), on the corpus's
PEs and on PEs built or damaged here."""

from __future__ import annotations

import datetime
import hashlib
import json
import random
import re
import struct
import subprocess
from pathlib import Path

import pefile
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from stoq.model import clean
from stoq_plugins.peinfo import PeinfoPlugin

PES = ("test.exe", "test_xor.exe")


@pytest.fixture
def plugin() -> PeinfoPlugin:
    p = PeinfoPlugin()
    p.setup()
    return p


def scan(plugin: PeinfoPlugin, make_payload, data: bytes, **options):
    opts = plugin.Options(**{**plugin.options.model_dump(), **options})
    result = plugin.scan(make_payload(data), opts)
    assert clean(result.data) == result.data
    return result


def pefile_resources(pe: pefile.PE) -> list[tuple]:
    found = []
    for rtype in pe.DIRECTORY_ENTRY_RESOURCE.entries:
        for rname in rtype.directory.entries:
            for leaf in rname.directory.entries:
                size = leaf.data.struct.Size
                found.append((pefile.RESOURCE_TYPE[rtype.struct.Id], rname.struct.Id, pefile.LANG[leaf.data.lang],
                              size, hashlib.sha256(pe.get_data(leaf.data.struct.OffsetToData, size)).hexdigest()))
    return found


@pytest.mark.parametrize("name", PES)
def test_resources_version_rich_dotnet_as_pefile(plugin: PeinfoPlugin, corpus: Path, make_payload, name: str) -> None:
    data = (corpus / name).read_bytes()
    pe = pefile.PE(data=data)
    out = scan(plugin, make_payload, data).data
    assert [(r["type"], r["name"], r["language"], r["size"], r["sha256"]) for r in out["resources"]] == \
        pefile_resources(pe)
    strings = {k.decode(): v.decode() for fi in getattr(pe, "FileInfo", []) for e in fi if e.Key == b"StringFileInfo"
               for t in e.StringTable for k, v in t.entries.items()}
    if strings:
        fixed = pe.VS_FIXEDFILEINFO[0]
        assert out["version_info"] == {"strings": strings, "file_version": "%d.%d.%d.%d" % (
            fixed.FileVersionMS >> 16, fixed.FileVersionMS & 0xFFFF, fixed.FileVersionLS >> 16,
            fixed.FileVersionLS & 0xFFFF), "product_version": "%d.%d.%d.%d" % (
            fixed.ProductVersionMS >> 16, fixed.ProductVersionMS & 0xFFFF, fixed.ProductVersionLS >> 16,
            fixed.ProductVersionLS & 0xFFFF)}
    else:
        assert out["version_info"] is None
    if pe.RICH_HEADER is None:
        assert out["rich_header"] is None
    else:
        values = pe.RICH_HEADER.values
        assert [(e["comp_id"], e["count"]) for e in out["rich_header"]["entries"]] == list(zip(values[::2], values[1::2]))
        assert out["rich_header"]["md5"] == pe.get_rich_header_hash()
        assert all(e["comp_id"] == e["product_id"] << 16 | e["build"] for e in out["rich_header"]["entries"])
    com = pe.OPTIONAL_HEADER.DATA_DIRECTORY[14]
    assert out["dotnet"] is bool(com.VirtualAddress and com.Size)
    assert out["tls_callbacks"] is None and out["signature"] is None  # neither file has them


def test_known_values_of_the_corpus(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    exe = scan(plugin, make_payload, (corpus / "test.exe").read_bytes()).data
    xor = scan(plugin, make_payload, (corpus / "test_xor.exe").read_bytes()).data
    assert (exe["dotnet"], xor["dotnet"]) == (True, False)
    assert exe["version_info"]["strings"]["OriginalFilename"] == "HelloWorld.exe"
    assert [r["type"] for r in exe["resources"]] == ["RT_VERSION", "RT_MANIFEST"]
    assert exe["rich_header"] is None and len(xor["rich_header"]["entries"]) == 10


@pytest.mark.tools("objdump")
@pytest.mark.parametrize("name", PES)
def test_pdb_path_guid_and_age_as_objdump_and_pefile(plugin: PeinfoPlugin, corpus: Path, make_payload,
                                                    name: str) -> None:
    data = (corpus / name).read_bytes()
    out = scan(plugin, make_payload, data).data
    dumped = subprocess.run(["objdump", "-p", str(corpus / name)], capture_output=True, text=True, check=True).stdout
    signature, age, path = re.search(r"format RSDS signature ([0-9a-f]+) age (\d+) pdb (.+)\)", dumped).groups()
    (codeview,) = [d for d in out["debug"] if "pdb" in d]
    assert codeview["pdb"]["path"] == path and codeview["pdb"]["age"] == int(age)
    assert codeview["pdb"]["guid"].replace("-", "") == signature  # objdump prints the GUID's fields in order
    pe = pefile.PE(data=data)
    assert [d["type"] for d in out["debug"]] == [pefile.DEBUG_TYPE[d.struct.Type] for d in pe.DIRECTORY_ENTRY_DEBUG]
    assert codeview["pdb"]["symbol_id"] == pe.DIRECTORY_ENTRY_DEBUG[0].entry.Signature_String


@pytest.mark.tools("exiftool")
def test_version_info_as_exiftool(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    """ExifTool reads the version resource with its own parser: the same values (its tag names are the
    keys without spaces, ``OriginalFilename`` spelt ``OriginalFileName``)."""
    out = scan(plugin, make_payload, (corpus / "test.exe").read_bytes()).data["version_info"]
    tags = json.loads(subprocess.run(["exiftool", "-j", "-G1", str(corpus / "test.exe")], capture_output=True,
                                     check=True).stdout)[0]
    exe = {k.split(":", 1)[1].lower(): v for k, v in tags.items() if k.startswith("EXE:")}
    assert {k: exe[k.replace(" ", "").lower()] for k in out["strings"]} == out["strings"]
    assert (out["file_version"], out["product_version"]) == (exe["fileversionnumber"], exe["productversionnumber"])


def build_tls_exe(callbacks: list[int], base: int = 0x400000) -> bytes:
    """A PE32 executable whose one section holds a TLS directory and its array of ``callbacks`` (VAs)."""
    rva, raw = 0x1000, 0x200
    array = rva + 0x40
    tls = struct.pack("<IIIIII", base + rva + 0x100, base + rva + 0x104, base + rva + 0x108, base + array, 0, 0)
    body = tls.ljust(0x40, b"\x00") + b"".join(struct.pack("<I", c) for c in callbacks) + b"\x00" * 4
    section = body.ljust(0x200, b"\x00")
    dos = b"MZ" + b"\x00" * 58 + struct.pack("<I", 0x40)
    file_header = struct.pack("<HHIIIHH", 0x14C, 1, 1_600_000_000, 0, 0, 224, 0x0102)
    data_dirs = b"\x00" * 8 * 9 + struct.pack("<II", rva, 24) + b"\x00" * 8 * 6
    optional = struct.pack("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", 0x10B, 14, 0, len(section), 0, 0, rva, rva, rva,
                           base, 0x1000, 0x200, 6, 0, 0, 0, 6, 0, 0, rva + 0x1000, raw, 0, 3, 0x140,
                           0x100000, 0x1000, 0x100000, 0x1000, 0, 16) + data_dirs
    section_header = struct.pack("<8sIIIIIIHHI", b".tls", 0x1000, rva, len(section), raw, 0, 0, 0, 0, 0xC0000040)
    return (dos + b"PE\x00\x00" + file_header + optional + section_header).ljust(raw, b"\x00") + section


def test_tls_callbacks_and_their_cap(plugin: PeinfoPlugin, make_payload) -> None:
    callbacks = [0x401010, 0x401020, 0x401030, 0x401040]
    data = build_tls_exe(callbacks)
    pe = pefile.PE(data=data)
    assert pe.DIRECTORY_ENTRY_TLS.struct.AddressOfCallBacks == 0x401040  # pefile reads the directory written
    result = scan(plugin, make_payload, data)
    zeros = ["pe:malformed"]  # pefile warns that the file is mostly zero bytes
    assert pefile.PE(data=data).get_warnings()[0].startswith("Byte 0x00 makes up")
    assert (result.data["tls_callbacks"], result.flags) == (callbacks, zeros)
    capped = scan(plugin, make_payload, data, max_items=3)
    assert (capped.data["tls_callbacks"], capped.flags) == (callbacks[:3], ["limit:pe-tls-callbacks", *zeros])
    assert scan(plugin, make_payload, build_tls_exe([])).data["tls_callbacks"] == []


def certificate(name: str, key, issuer_name: str, issuer_key) -> x509.Certificate:
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key()).serial_number(0x1234 if name == issuer_name else 0xBEEF)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(issuer_key, hashes.SHA256()))


def signed(data: bytes) -> bytes:
    """``data`` with a PKCS#7 SignedData (a test CA and its leaf, the signer) as its Authenticode blob."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("Test CA", ca_key, "Test CA", ca_key)
    leaf = certificate("Test Signer", leaf_key, "Test CA", ca_key)
    der = (pkcs7.PKCS7SignatureBuilder().set_data(b"content").add_signer(leaf, leaf_key, hashes.SHA256())
           .add_certificate(ca).sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature]))
    blob = struct.pack("<IHH", 8 + len(der), 0x200, 2) + der
    blob += b"\x00" * (-len(blob) % 8)
    entry = pefile.PE(data=data).OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
    padded = data + b"\x00" * (-len(data) % 8)
    return padded[:entry] + struct.pack("<II", len(padded), len(blob)) + padded[entry + 8:] + blob


def test_authenticode_signer(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = signed((corpus / "test_xor.exe").read_bytes())
    security = pefile.PE(data=data).OPTIONAL_HEADER.DATA_DIRECTORY[4]
    result = scan(plugin, make_payload, data)
    sig = result.data["signature"]
    assert (sig["offset"], sig["size"], sig["within_file"]) == (security.VirtualAddress, security.Size, True)
    assert (sig["revision"], sig["certificate_type"], sig["signer"]) == (0x200, 2, "CN=Test Signer")
    assert sorted((c["subject"], c["issuer"], c["serial"]) for c in sig["certificates"]) == [
        ("CN=Test CA", "CN=Test CA", "1234"), ("CN=Test Signer", "CN=Test CA", "beef")]
    assert result.flags == []
    capped = scan(plugin, make_payload, data, max_items=1)
    assert len(capped.data["signature"]["certificates"]) == 1 and "limit:pe-certificates" in capped.flags


def test_resource_cap_and_bytes_cap(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = (corpus / "test.exe").read_bytes()
    full = scan(plugin, make_payload, data).data["resources"]
    one = scan(plugin, make_payload, data, max_resources=1)
    assert (one.data["resources"], one.flags) == (full[:1], ["limit:pe-resources", "pe:malformed"])
    few = scan(plugin, make_payload, data, max_resource_bytes=full[0]["size"])
    assert [r["sha256"] for r in few.data["resources"]] == [full[0]["sha256"], None]
    assert few.flags == ["limit:pe-resource-bytes", "pe:malformed"]


# -- malformed files: whatever pefile parsed, the warnings, and pe:malformed --------------------------------

def test_truncated_pe(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = (corpus / "test_xor.exe").read_bytes()
    for cut in (0x400, len(data) // 2, len(data) - 100):
        part = data[:cut]
        pe = pefile.PE(data=part)
        result = scan(plugin, make_payload, part)
        out = result.data
        # pefile's own warnings first (more come as the plugin reads further: imports for the imphash...)
        assert out["warnings"][:len(pe.get_warnings())] == pe.get_warnings() != []
        assert "pe:malformed" in result.flags
        assert [s["name"] for s in out["sections"]] == [s.Name.rstrip(b"\x00").decode() for s in pe.sections]
        assert out["machine"] == "IMAGE_FILE_MACHINE_AMD64"


def test_corrupt_section_table(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = bytearray((corpus / "test_xor.exe").read_bytes())
    pe = pefile.PE(data=bytes(data))
    for section in pe.sections:  # raw data pointers past the end of the file
        struct.pack_into("<I", data, section.get_field_absolute_offset("PointerToRawData"), 0x7FFF0000)
    damaged = pefile.PE(data=bytes(data))
    result = scan(plugin, make_payload, bytes(data))
    assert "pe:malformed" in result.flags
    assert result.data["warnings"][:len(damaged.get_warnings())] == damaged.get_warnings() != []
    assert len(result.data["sections"]) == len(damaged.sections) == len(pe.sections)
    many = bytearray((corpus / "test_xor.exe").read_bytes())  # more sections declared than there are headers
    struct.pack_into("<H", many, pe.FILE_HEADER.get_field_absolute_offset("NumberOfSections"), 0xFFFF)
    result = scan(plugin, make_payload, bytes(many))
    assert "pe:malformed" in result.flags and result.data["warning_count"] > 0


def test_bogus_resource_offsets(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    original = (corpus / "test.exe").read_bytes()
    pe = pefile.PE(data=original)
    leaves = [leaf.data.struct for t in pe.DIRECTORY_ENTRY_RESOURCE.entries for n in t.directory.entries
              for leaf in n.directory.entries]
    good = scan(plugin, make_payload, original).data["resources"]
    for field, value in (("OffsetToData", 0x7FFFFF00), ("Size", 0x7FFFFFFF)):
        data = bytearray(original)
        struct.pack_into("<I", data, leaves[0].get_field_absolute_offset(field), value)
        damaged = pefile.PE(data=bytes(data))
        result = scan(plugin, make_payload, bytes(data))
        first, *rest = result.data["resources"]
        assert first["sha256"] is None and first["size"] == (value if field == "Size" else leaves[0].Size)
        assert rest == good[1:] and first["type"] == "RT_VERSION"
        assert "pe:malformed" in result.flags and "limit:pe-resource-bytes" not in result.flags
        assert result.data["warnings"][:len(damaged.get_warnings())] == damaged.get_warnings()
    # A resource directory declaring more entries than the file holds.
    directory = bytearray(original)
    root = pe.DIRECTORY_ENTRY_RESOURCE.struct
    struct.pack_into("<H", directory, root.get_field_absolute_offset("NumberOfIdEntries"), 0xFFFF)
    damaged = pefile.PE(data=bytes(directory))
    result = scan(plugin, make_payload, bytes(directory))
    assert result.data["warnings"][:len(damaged.get_warnings())] == damaged.get_warnings()
    assert "pe:malformed" in result.flags


def test_sections_cap(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = (corpus / "test_xor.exe").read_bytes()
    names = [s.Name.rstrip(b"\x00").decode() for s in pefile.PE(data=data).sections]
    result = scan(plugin, make_payload, data, max_items=2)
    assert len(names) > 2 and [s["name"] for s in result.data["sections"]] == names[:2]
    assert "limit:pe-sections" in result.flags


def test_warnings_cap(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    data = (corpus / "test.exe").read_bytes()
    result = scan(plugin, make_payload, data, max_warnings=1)
    assert result.data["warnings"] == pefile.PE(data=data).get_warnings()[:1]
    assert result.data["warning_count"] == 2 and result.flags == ["pe:malformed", "limit:pe-warnings"]


def test_random_damage_never_escapes(plugin: PeinfoPlugin, corpus: Path, make_payload) -> None:
    rng = random.Random(14)
    for name in PES:
        original = (corpus / name).read_bytes()
        for _ in range(150):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):  # damage the headers and directories, where the parsing is
                data[rng.randrange(0x40, 0x600)] = rng.randrange(256)
            result = plugin.scan(make_payload(bytes(data)), plugin.options)
            assert clean(result.data) == result.data
            assert ("pe:malformed" in result.flags) == bool(result.data.get("parse_error") or result.data["warnings"])
