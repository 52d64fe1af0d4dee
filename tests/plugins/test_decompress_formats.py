"""``decompress`` on LZH, ACE, Apple disk images (UDIF) and xar hard links. No tool here creates LZH, ACE or
UDIF files, so each is built byte by byte (stored members with their CRCs; a UDIF of zlib chunks around a
FAT image made with mkfs.fat and mtools), and the reference tool reads it first: stoq's children must be
exactly what ``unar`` (lsar) or ``7z`` extract from the same bytes, and what none reads is flagged."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from stoq.plugin import Result
from stoq_plugins.decompress import DecompressPlugin, detect

FILES = {"a.txt": b"hello from a packed file\n", "b.bin": bytes(range(256)) * 20 + b"tail"}
#: 2024-05-17 12:30:00 as an MS-DOS date and time.
DOS_TIME = (2024 - 1980) << 25 | 5 << 21 | 17 << 16 | 12 << 11 | 30 << 5

pytestmark = pytest.mark.usefixtures("scratch_parent")


def scan(make_payload, content: bytes, mime: str = "application/octet-stream", **options) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    payload = make_payload(content, mime, None)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=60)


def extracted(out: Path) -> dict[str, bytes]:
    """What a reference tool wrote under ``out``: relative path -> bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def children(result: Result) -> dict[str, bytes]:
    return {c.filename: c.content for c in result.children}


# --- LZH ------------------------------------------------------------------------------------------------

def crc16(data: bytes) -> int:
    """CRC-16/ARC (LHA's member checksum)."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def lzh(files: dict[str, bytes], level: int) -> bytes:
    """An LHA archive of stored (-lh0-) members, ended by a zero byte. Level 0: a header with its byte sum
    and the name inside; level 2: a 16-bit header size, Unix time, and the name in an extended header."""
    out = bytearray()
    for name, data in files.items():
        raw = name.encode()
        if level == 0:
            body = (b"-lh0-" + struct.pack("<IIIBB", len(data), len(data), DOS_TIME, 0x20, 0) + bytes([len(raw)])
                    + raw + struct.pack("<H", crc16(data)))
            out += bytes([len(body), sum(body) & 0xFF]) + body + data
        else:
            base = (b"-lh0-" + struct.pack("<IIIBB", len(data), len(data), 1715949000, 0x20, 2)
                    + struct.pack("<H", crc16(data)) + b"U")
            extended = struct.pack("<HB", 3 + len(raw), 1) + raw + struct.pack("<H", 0)
            out += struct.pack("<H", 2 + len(base) + len(extended)) + base + extended + data
    return bytes(out + b"\x00")


@pytest.mark.parametrize("level", [0, 2])
def test_lzh_members_are_unars(tmp_path: Path, make_payload, level: int) -> None:
    data = lzh(FILES, level)
    (tmp_path / "t.lzh").write_bytes(data)
    listing = json.loads(run("lsar", "-j", "t.lzh", cwd=tmp_path).stdout)
    assert [(e["XADFileName"], e["XADFileSize"]) for e in listing["lsarContents"]] == [
        (name, len(content)) for name, content in FILES.items()]
    run("unar", "-q", "-o", "out", "-D", "t.lzh", cwd=tmp_path)
    assert extracted(tmp_path / "out") == FILES  # unar checks each CRC-16 as it extracts
    assert detect(make_payload(data)) == "lzh"
    for mime in ("application/x-lzh-compressed", "application/octet-stream"):  # libmagic's, and a rule's
        result = scan(make_payload, data, mime)
        assert result.data["format"] == "lzh" and result.flags == []
        assert children(result) == FILES and [c.filename for c in result.children] == list(FILES)
    capped = scan(make_payload, data, max_members=1)
    assert children(capped) == {"a.txt": FILES["a.txt"]} and capped.flags == ["limit:members"]


# --- ACE ------------------------------------------------------------------------------------------------

def ace_crc(data: bytes) -> int:
    """ACE's CRC-32: the standard one without its final inversion (headers keep its low 16 bits)."""
    return zlib.crc32(data) ^ 0xFFFFFFFF


def ace(files: dict[str, bytes]) -> bytes:
    """An ACE 2.0 archive: the main header block, then one block per stored member followed by its data."""
    def block(body: bytes) -> bytes:
        return struct.pack("<HH", ace_crc(body) & 0xFFFF, len(body)) + body
    out = block(struct.pack("<BH", 0, 0) + b"**ACE**" + bytes([20, 20, 0, 0]) + struct.pack("<I", DOS_TIME) + bytes(8))
    for name, data in files.items():
        raw = name.encode()
        out += block(struct.pack("<BHIIIII", 1, 1, len(data), len(data), DOS_TIME, 0x20, ace_crc(data))
                     + struct.pack("<BBHHH", 0, 0, 0, 0, len(raw)) + raw) + data
    return out


def test_ace_members_are_read_in_process(tmp_path: Path, make_payload) -> None:
    """unar 1.10 recognises this archive ("Ace") but lists no member of it, so acefile reads ACE; the
    expected children are the files packed (each CRC checked by acefile as it reads)."""
    data = ace(FILES)
    (tmp_path / "t.ace").write_bytes(data)
    assert json.loads(run("lsar", "-j", "t.ace", cwd=tmp_path).stdout)["lsarFormatName"] == "Ace"
    assert detect(make_payload(data)) == "ace"
    result = scan(make_payload, data, "application/x-ace-compressed")
    assert result.data == {"format": "ace", "members": 2, "extracted": 2,
                           "decompressed": sum(map(len, FILES.values()))} and result.flags == []
    assert children(result) == FILES and [c.filename for c in result.children] == list(FILES)
    for child in result.children:
        assert child.meta["crc"] == zlib.crc32(child.content) and child.meta["modified"] == "2024-05-17T12:30:00Z"
        assert child.meta["compressed_size"] == len(child.content) and child.meta["encrypted"] is False
    assert scan(make_payload, ace({})).children == []
    capped = scan(make_payload, data, max_member_bytes=1000)
    assert children(capped) == {"a.txt": FILES["a.txt"]} and capped.flags == ["limit:member-bytes"]
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF  # in b.bin's data: its CRC fails
    broken = scan(make_payload, bytes(damaged))
    assert children(broken) == {"a.txt": FILES["a.txt"]} and broken.flags == ["corrupt:member"]
    with pytest.raises(ValueError, match="not a readable ACE archive"):
        scan(make_payload, data[:20] + bytes(10))


# --- Apple disk images ----------------------------------------------------------------------------------

def udif(raw: bytes, chunk_sectors: int = 256, name: str = "disk image (FAT : 0)") -> bytes:
    """A read-only UDIF image (what ``hdiutil create -format UDZO`` writes): zlib chunks of the raw disk (zero
    chunks left out), the property list whose ``blkx`` entry maps them, and the 512-byte ``koly`` trailer."""
    sectors = len(raw) // 512
    fork, chunks = bytearray(), []
    for first in range(0, sectors, chunk_sectors):
        count = min(chunk_sectors, sectors - first)
        piece = raw[first * 512:(first + count) * 512]
        if not piece.strip(b"\x00"):
            chunks.append(struct.pack(">IIQQQQ", 2, 0, first, count, len(fork), 0))
            continue
        packed = zlib.compress(piece)
        chunks.append(struct.pack(">IIQQQQ", 0x80000005, 0, first, count, len(fork), len(packed)))
        fork += packed
    chunks.append(struct.pack(">IIQQQQ", 0xFFFFFFFF, 0, sectors, 0, len(fork), 0))
    mish = (b"mish" + struct.pack(">IQQQII", 1, 0, sectors, 0, 0, 0) + bytes(24) + struct.pack(">II", 0, 0)
            + bytes(128) + struct.pack(">I", len(chunks)) + b"".join(chunks))
    plist = ('<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict><key>resource-fork</key><dict>'
             '<key>blkx</key><array><dict><key>Attributes</key><string>0x0050</string><key>CFName</key>'
             f'<string>{name}</string><key>Data</key><data>' + base64.b64encode(mish).decode()
             + f'</data><key>ID</key><string>0</string><key>Name</key><string>{name}</string>'
             '</dict></array></dict></dict></plist>\n').encode()
    koly = (b"koly" + struct.pack(">IIIQQQQQII", 4, 512, 1, 0, 0, len(fork), 0, 0, 1, 1) + bytes(16)
            + struct.pack(">II", 0, 0) + bytes(128) + struct.pack(">QQ", len(fork), len(plist)) + bytes(120)
            + struct.pack(">II", 0, 0) + bytes(128) + struct.pack(">IQ", 1, sectors) + bytes(12))
    assert len(koly) == 512
    return bytes(fork) + plist + koly


def fat_disk(tmp_path: Path) -> bytes:
    raw = tmp_path / "fat.img"
    run("mkfs.fat", "-C", str(raw), "2048", cwd=tmp_path)
    run("mmd", "-i", str(raw), "::sub", cwd=tmp_path)
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
        run("mcopy", "-i", str(raw), name, "::" + ("sub/" if name.endswith(".bin") else "") + name, cwd=tmp_path)
    return raw.read_bytes()


def seven_listing(path: Path) -> list[tuple[str, int]]:
    """(path, size) of each file ``7z l -slt`` lists (the disk image itself and folders left out)."""
    text = run("7z", "l", "-slt", "-ba", path.name, cwd=path.parent).stdout.decode()
    entries = []
    for block in text.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if fields.get("Folder") == "-":
            entries.append((fields["Path"], int(fields["Size"])))
    return entries


def test_dmg_gives_the_files_of_its_filesystem(tmp_path: Path, make_payload) -> None:
    data = udif(fat_disk(tmp_path))
    (tmp_path / "t.dmg").write_bytes(data)
    assert seven_listing(tmp_path / "t.dmg") == [("a.txt", 25), ("sub/b.bin", 5124)]
    run("7z", "x", "-y", "-oout", "t.dmg", cwd=tmp_path)
    reference = extracted(tmp_path / "out")
    assert reference == {"a.txt": FILES["a.txt"], "sub/b.bin": FILES["b.bin"]}
    # libmagic names this image after its first chunk (zlib): the trailer decides first
    for mime in ("application/zlib", "application/x-apple-diskimage", "application/octet-stream"):
        result = scan(make_payload, data, mime)
        assert result.data["format"] == "dmg" and result.flags == [] and children(result) == reference
    capped = scan(make_payload, data, max_member_bytes=1000)
    assert children(capped) == {"a.txt": FILES["a.txt"]} and capped.flags == ["limit:member-bytes"]


def test_dmg_of_an_unformatted_disk_gives_the_disk(tmp_path: Path, make_payload) -> None:
    raw = b"\x01" * 65536 + bytes(65536)  # no filesystem 7z knows: the partition itself
    data = udif(raw, chunk_sectors=64, name="disk image (Apple_Free : 0)")
    (tmp_path / "d.dmg").write_bytes(data)
    run("7z", "x", "-y", "-oout", "d.dmg", cwd=tmp_path)
    reference = extracted(tmp_path / "out")
    assert list(reference.values()) == [raw], list(reference)
    result = scan(make_payload, data)
    assert result.data["format"] == "dmg" and children(result) == reference


# --- xar: a second name for one file --------------------------------------------------------------------

def xar_with_hard_link(content: bytes) -> bytes:
    """A xar whose second file is a hard link to the first (one heap entry, two names)."""
    packed = zlib.compress(content)

    def entry(i: int, name: str, kind: str) -> str:
        return (f'<file id="{i}"><name>{name}</name><type {kind}>hardlink</type><mode>0644</mode><data>'
                f'<length>{len(packed)}</length><offset>20</offset><size>{len(content)}</size>'
                f'<encoding style="application/x-gzip"/>'
                f'<extracted-checksum style="sha1">{hashlib.sha1(content).hexdigest()}</extracted-checksum>'
                f'<archived-checksum style="sha1">{hashlib.sha1(packed).hexdigest()}</archived-checksum>'
                f'</data></file>')
    files = entry(1, "a.txt", 'link="original"') + entry(2, "c.txt", 'link="1"')
    toc = ('<?xml version="1.0" encoding="UTF-8"?><xar><toc><checksum style="sha1"><offset>0</offset><size>20</size>'
           f'</checksum>{files}</toc></xar>').encode()
    packed_toc = zlib.compress(toc)
    header = (b"xar!" + struct.pack(">HHQQI", 28, 1, len(packed_toc), len(toc), 1))
    return header + packed_toc + hashlib.sha1(packed_toc).digest() + packed


def test_xar_hard_link_is_a_member(tmp_path: Path, make_payload) -> None:
    """bsdtar lists both names (the second as ``link to``); stoq used to lose the second: bsdtar's pax
    rewrite makes it a hard-link entry with no data, which the tar reader skipped."""
    data = xar_with_hard_link(FILES["a.txt"])
    (tmp_path / "t.xar").write_bytes(data)
    listing = run("bsdtar", "-tvf", "t.xar", cwd=tmp_path).stdout.decode().splitlines()
    assert [line.split()[8:] for line in listing] == [["a.txt"], ["c.txt", "link", "to", "a.txt"]]
    (tmp_path / "out").mkdir()
    run("bsdtar", "-xf", "../t.xar", cwd=tmp_path / "out")
    reference = extracted(tmp_path / "out")
    assert reference == {"a.txt": FILES["a.txt"], "c.txt": FILES["a.txt"]}
    result = scan(make_payload, data, "application/x-xar")
    assert children(result) == reference and result.flags == [] and result.data["members"] == 2
    capped = scan(make_payload, data, "application/x-xar", max_total_bytes=30)  # the copy counts too
    assert children(capped) == {"a.txt": FILES["a.txt"]} and capped.flags == ["limit:total-bytes"]


# --- recognised, not read -------------------------------------------------------------------------------

def test_a_container_no_reader_handles_is_flagged(make_payload) -> None:
    """A Unix ``compress`` (.Z) stream: libmagic names it, MIME routing sends it here, nothing reads it."""
    import magic

    data = b"\x1f\x9d\x90" + bytes(range(1, 200))
    mime = magic.from_buffer(data, mime=True)
    assert mime == "application/x-compress" and mime in DecompressPlugin.mimes
    result = scan(make_payload, data, mime)
    assert result.flags == ["unsupported:compress"] and result.children == []
    assert result.data == {"format": "compress", "members": 0, "extracted": 0}


def test_a_payload_a_dispatch_rule_sent_here_and_nothing_reads_is_flagged(make_payload) -> None:
    """The ``lzh_archive`` rule matches any ``-l??-`` at offset 2; an unknown method is no format read here."""
    import dataclasses

    import yara

    from stoq.dispatch import bundled_dispatch_rules

    data = b"\x20\x00-lzx-" + bytes(64)
    rules = yara.compile(filepath=str(bundled_dispatch_rules()))
    assert [m.rule for m in rules.match(data=data)] == ["lzh_archive"]
    plain = make_payload(data)
    assert detect(plain) is None and not DecompressPlugin().accepts(plain)  # not sent by a rule: not for us
    routed = dataclasses.replace(plain, dispatch_rules=("lzh_archive",))
    result = scan(lambda *a: routed, data)
    assert result.flags == ["unsupported:lzh"] and result.children == []
