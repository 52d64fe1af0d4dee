"""``decompress`` on formats the corpus has no sample of (rpm, xar, udf, vhd): each input is made here with
real tools (rpmbuild, genisoimage, mkudffs, mkfs.fat and mtools, qemu-img; xar, which Debian does not
package, with python's own zlib and hashlib), recognised by its magic bytes whatever MIME type libmagic
gives it (rpm, xar and vhd are not in ``mimes`` yet), and must yield exactly the files packed into it."""

from __future__ import annotations

import hashlib
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import magic
import pytest

from stoq.plugin import Result
from stoq_plugins.decompress import FORMATS, DecompressPlugin, detect

MiB = 1 << 20
FILES = {"a.txt": b"hello from a packed file\n", "sub/b.bin": bytes(range(256)) * 20 + b"tail"}


pytestmark = [pytest.mark.usefixtures("scratch_parent"),  # tools' scratch dirs must be gone after each test
              pytest.mark.tools("7z", "bsdtar", "rpmbuild", "genisoimage", "mkudffs", "qemu-img", "mkfs.fat", "mmd",
                                "mcopy")]


def scan(make_payload, content: bytes, mime: str, **options) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    payload = make_payload(content, mime, None)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def hashes(contents) -> Counter:
    return Counter(hashlib.sha256(c).hexdigest() for c in contents)


def tool(*argv: str, cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=60)


def tree(where: Path) -> Path:
    for name, content in FILES.items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        (where / name).write_bytes(content)
    return where


def routed(make_payload, data: bytes, fmt: str, **options) -> Result:
    """Scans ``data`` under the MIME type libmagic gives it (the format is known by its magic bytes, which
    is all a payload sent here by a dispatch rule under another MIME type has); octet-stream gives the same."""
    mime = magic.from_buffer(data, mime=True)
    assert detect(make_payload(data, "application/octet-stream")) == fmt
    assert FORMATS.get(mime, fmt) == fmt
    result = scan(make_payload, data, mime, **options)
    assert result.data["format"] == fmt
    return result


def assert_files(result: Result) -> None:
    assert hashes(c.content for c in result.children) == hashes(FILES.values())
    assert result.flags == [] and result.data["extracted"] == len(FILES)


# --- rpm, xar: bsdtar -----------------------------------------------------------------------------------

SPEC = """Name: t
Version: 1
Release: 1
Summary: t
License: MIT
BuildArch: noarch
%description
t
%install
mkdir -p %{buildroot}/opt/t/sub
cp %{_sourcedir}/a.txt %{buildroot}/opt/t/a.txt
cp %{_sourcedir}/sub/b.bin %{buildroot}/opt/t/sub/b.bin
%files
/opt/t/a.txt
/opt/t/sub/b.bin
"""


@pytest.mark.parametrize("payload", ["w9.gzdio", "w2.xzdio", "w3.zstdio"])
def test_rpm(tmp_path: Path, make_payload, payload: str) -> None:
    top, src = tmp_path / "rpmbuild", tree(tmp_path / "src")
    (tmp_path / "t.spec").write_text(SPEC)
    defines = {"_topdir": top, "_sourcedir": src, "_tmppath": tmp_path, "_binary_payload": payload,
               "__os_install_post": "%{nil}", "_build_id_links": "none"}
    tool("rpmbuild", "-bb", *(a for k, v in defines.items() for a in ("--define", f"{k} {v}")), "t.spec",
         cwd=tmp_path)
    data = next(top.glob("RPMS/*/*.rpm")).read_bytes()
    assert magic.from_buffer(data, mime=True) == "application/x-rpm"
    result = routed(make_payload, data, "rpm")
    assert_files(result)
    assert sorted(c.filename for c in result.children) == ["./opt/t/a.txt", "./opt/t/sub/b.bin"]
    bomb = scan(make_payload, data, "application/x-rpm", max_member_bytes=1000)
    assert bomb.flags == ["limit:member-bytes"] and [c.content for c in bomb.children] == [FILES["a.txt"]]


def xar(files: dict[str, bytes]) -> bytes:
    """A xar archive (header, zlib-compressed XML table of contents, heap) with sha1 checksums."""
    heap = bytearray(20)  # the table of contents' checksum comes first
    entries = []
    for i, (name, content) in enumerate(files.items(), 1):
        packed = zlib.compress(content)
        entries.append(
            f'<file id="{i}"><name>{name}</name><type>file</type><mode>0644</mode><data>'
            f'<length>{len(packed)}</length><offset>{len(heap)}</offset><size>{len(content)}</size>'
            f'<encoding style="application/x-gzip"/>'
            f'<extracted-checksum style="sha1">{hashlib.sha1(content).hexdigest()}</extracted-checksum>'
            f'<archived-checksum style="sha1">{hashlib.sha1(packed).hexdigest()}</archived-checksum>'
            f'</data></file>')
        heap += packed
    toc = ('<?xml version="1.0" encoding="UTF-8"?><xar><toc><checksum style="sha1"><offset>0</offset>'
           f'<size>20</size></checksum>{"".join(entries)}</toc></xar>').encode()
    packed_toc = zlib.compress(toc)
    heap[:20] = hashlib.sha1(packed_toc).digest()
    header = (b"xar!" + (28).to_bytes(2, "big") + (1).to_bytes(2, "big") + len(packed_toc).to_bytes(8, "big")
              + len(toc).to_bytes(8, "big") + (1).to_bytes(4, "big"))
    return header + packed_toc + bytes(heap)


def test_xar(make_payload) -> None:
    flat = {"a.txt": FILES["a.txt"], "b.bin": FILES["sub/b.bin"]}  # (a flat table: no directory entries)
    data = xar(flat)
    listing = subprocess.run(["bsdtar", "-tf", "-"], input=data, capture_output=True, check=True, timeout=60)
    assert listing.stdout.decode().split() == list(flat)  # libarchive itself reads it
    assert magic.from_buffer(data, mime=True) == "application/x-xar"
    result = routed(make_payload, data, "xar")
    assert_files(result)
    assert sorted(c.filename for c in result.children) == sorted(flat)


# --- udf, vhd: 7z ---------------------------------------------------------------------------------------

def udf_bridge(tmp_path: Path) -> bytes:
    tree(tmp_path / "src")
    tool("genisoimage", "-quiet", "-udf", "-o", str(tmp_path / "bridge.iso"), "src", cwd=tmp_path)
    return (tmp_path / "bridge.iso").read_bytes()


def test_udf_bridge_is_read_as_iso(tmp_path: Path, make_payload) -> None:
    data = udf_bridge(tmp_path)
    assert magic.from_buffer(data, mime=True) == "application/x-iso9660-image"
    assert_files(routed(make_payload, data, "iso"))


def test_udf_without_iso9660_descriptors(tmp_path: Path, make_payload) -> None:
    """The bridge image with its ISO 9660 volume descriptors blanked: only UDF is left, which libmagic does
    not name (application/octet-stream) and 7z reads as UDF."""
    data = bytearray(udf_bridge(tmp_path))
    blanked = 0
    for at in range(32769, 32769 + 16 * 2048, 2048):
        if data[at:at + 5] == b"CD001":
            data[at:at + 5], blanked = bytes(5), blanked + 1
    assert blanked >= 2 and magic.from_buffer(bytes(data), mime=True) == "application/octet-stream"
    result = routed(make_payload, bytes(data), "udf")
    assert_files(result)
    assert sorted(c.filename for c in result.children) == sorted(FILES)


def test_empty_udf_from_mkudffs(tmp_path: Path, make_payload) -> None:
    image = tmp_path / "udf.img"
    image.write_bytes(bytes(MiB))
    tool("mkudffs", "--media-type=hd", "--blocksize=2048", str(image), cwd=tmp_path)
    data = image.read_bytes()
    assert data[32769:32774] == b"BEA01" and data[34817:34822] == b"NSR03"
    result = routed(make_payload, data, "udf")
    assert result.children == [] and result.data["members"] == 0


def fat_image(tmp_path: Path) -> Path:
    raw, src = tmp_path / "fat.img", tree(tmp_path / "src")
    tool("mkfs.fat", "-C", str(raw), "2048", cwd=tmp_path)
    tool("mmd", "-i", str(raw), "::sub", cwd=tmp_path)
    for name in FILES:
        tool("mcopy", "-i", str(raw), str(src / name), "::" + name, cwd=tmp_path)
    return raw


@pytest.mark.parametrize("subformat,mime", [("dynamic", "application/x-virtualbox-vhd"),
                                            ("fixed", "application/octet-stream")])
def test_vhd_of_a_fat_disk(tmp_path: Path, make_payload, subformat: str, mime: str) -> None:
    raw = fat_image(tmp_path)
    tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=" + subformat, str(raw), "d.vhd",
         cwd=tmp_path)
    data = (tmp_path / "d.vhd").read_bytes()
    assert magic.from_buffer(data, mime=True) == mime
    result = routed(make_payload, data, "vhd")
    assert_files(result)  # 7z reads the FAT filesystem inside
    assert sorted(c.filename for c in result.children) == sorted(FILES)


def test_vhd_of_an_unformatted_disk_is_capped(tmp_path: Path, make_payload) -> None:
    """A 64 MiB disk of zeros (a few KiB of dynamic vhd): 7z extracts the disk itself, within the caps."""
    (tmp_path / "zero.img").write_bytes(bytes(64 * MiB))
    tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "zero.img", "z.vhd", cwd=tmp_path)
    data = (tmp_path / "z.vhd").read_bytes()
    assert len(data) < 16384
    bomb = routed(make_payload, data, "vhd", max_member_bytes=MiB)
    assert bomb.children == [] and "limit:member-bytes" in bomb.flags
    small = tmp_path / "small.img"
    small.write_bytes(b"\x01" * MiB)
    tool("qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "small.img", "s.vhd", cwd=tmp_path)
    disk = routed(make_payload, (tmp_path / "s.vhd").read_bytes(), "vhd")
    assert len(disk.children) == 1 and disk.children[0].content.startswith(b"\x01" * MiB)
    assert set(disk.children[0].content[MiB:]) <= {0}  # (qemu-img rounds the disk up to its geometry)
