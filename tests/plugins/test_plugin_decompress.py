"""The ``decompress`` extractor on corpus containers and on hostile archives generated here."""

from __future__ import annotations

import builtins
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import struct
import tarfile
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import orjson
import pytest

from helpers import EXPECTED_CHILDREN
from stoq.model import clean
from stoq.plugin import Result
from stoq_plugins.decompress.formats import UNSUPPORTED
from stoq_plugins.decompress import DecompressPlugin

MiB = 1 << 20
HANDLED = {".zip": "application/zip", ".gz": "application/gzip", ".bz2": "application/x-bzip2",
           ".xz": "application/x-xz", ".tar": "application/x-tar",
           ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
           ".7z": "application/x-7z-compressed", ".rar": "application/x-rar", ".cpio": "application/x-cpio",
           ".deb": "application/vnd.debian.binary-package", ".iso": "application/x-iso9660-image",
           ".cab": "application/vnd.ms-cab-compressed"}
LOREM = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan(make_payload, content: bytes, mime: str = "application/zip", filename: str | None = None,
         **options) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    plugin.setup()
    payload = make_payload(content, mime, filename)
    assert plugin.accepts(payload)
    result = plugin.scan(payload, plugin.options)
    orjson.dumps(clean({"data": result.data, "meta": [c.meta for c in result.children]}))
    return result


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


# --- hand-built zips --------------------------------------------------------------------------------

def local_header(name: bytes, method: int, crc: int, csize: int, usize: int, flags: int = 0) -> bytes:
    return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, 0, 0x21, crc, csize, usize,
                       len(name), 0) + name


def central(entries: list[tuple[bytes, int, int, int, int, int, int]], body: bytes) -> bytes:
    """``body`` followed by a central directory of (name, method, flags, crc, csize, usize, offset) entries."""
    directory = b"".join(
        struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, method, 0, 0x21, crc, csize, usize,
                    len(name), 0, 0, 0, 0, 0, offset) + name
        for name, method, flags, crc, csize, usize, offset in entries)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(body), 0)
    return body + directory + end


def overlapping_bomb(files: int, kernel_size: int, prefix: bytes = b"",
                     prefix_entries: tuple = ()) -> tuple[bytes, list[bytes]]:
    """David Fifield's "better zip bomb": every entry's deflate data quotes the following local headers
    (stored blocks) and ends in one shared kernel, so all entries overlap. Returns the zip and names."""
    kernel_out = b"\x00" * kernel_size
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    kernel = compressor.compress(kernel_out) + compressor.flush()
    names = [b"bomb%02d.bin" % i for i in range(files)]
    headers: list[bytes] = [b""] * files
    content, data = kernel_out, kernel
    entries = []
    for i in reversed(range(files)):
        crc = zlib.crc32(content)
        headers[i] = local_header(names[i], 8, crc, len(data), len(content))
        entries.append((names[i], 8, 0, crc, len(data), len(content)))
        if i:  # the previous entry quotes this header in a non-final stored block
            data = struct.pack("<BHH", 0, len(headers[i]), len(headers[i]) ^ 0xFFFF) + headers[i] + data
            content = headers[i] + content
    entries.reverse()
    body, offsets = bytearray(prefix), []
    for i in range(files):
        offsets.append(len(body))
        body += headers[i] + (struct.pack("<BHH", 0, len(headers[i + 1]), len(headers[i + 1]) ^ 0xFFFF)
                              if i + 1 < files else kernel)
    directory = list(prefix_entries) + [e + (off,) for e, off in zip(entries, offsets)]
    return central(directory, bytes(body)), names


def zipcrypto(password: bytes, plain: bytes, check: int) -> bytes:
    """PKWARE traditional encryption of ``plain`` behind the 12-byte header whose last byte is ``check``."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = table[(keys[0] ^ byte) & 0xFF] ^ (keys[0] >> 8)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = table[(keys[2] ^ (keys[1] >> 24)) & 0xFF] ^ (keys[2] >> 8)

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in bytes(range(11)) + bytes([check]) + plain:
        t = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((t * (t ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def encrypted_zip(password: bytes, members: dict[bytes, bytes]) -> bytes:
    body, entries = b"", []
    for name, content in members.items():
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        crc = zlib.crc32(content)
        data = zipcrypto(password, compressor.compress(content) + compressor.flush(), crc >> 24)
        entries.append((name, 8, 1, crc, len(data), len(content), len(body)))
        body += local_header(name, 8, crc, len(data), len(content), flags=1) + data
    return central(entries, body)


# --- corpus -----------------------------------------------------------------------------------------

EXPECTED = EXPECTED_CHILDREN
#: The external programs that read a corpus container (7z: also a zip's AES members), by name or suffix.
TOOLS_FOR = {".7z": ("7z",), ".iso": ("7z",), ".cab": ("7z",), "test_aes256_password.zip": ("7z",),
             ".rar": ("unar", "lsar"), ".cpio": ("bsdtar",), ".deb": ("bsdtar",)}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.tools(*TOOLS_FOR.get(n, TOOLS_FOR.get(
    Path(n).suffix, ())))) for n in sorted(EXPECTED)])
def test_corpus_children_match_reference(corpus: Path, make_payload, name: str) -> None:
    mime = HANDLED[Path(name).suffix]  # every container of the corpus is handled
    result = scan(make_payload, (corpus / name).read_bytes(), mime, name)
    got = Counter(sha(child.content) for child in result.children)
    assert got == Counter(EXPECTED[name]["children"])
    assert result.flags == []
    assert result.data["extracted"] == result.data["members"] == len(EXPECTED[name]["children"])


def test_zip_meta_matches_zipfile(corpus: Path, make_payload) -> None:
    data = (corpus / "test.zip").read_bytes()
    result = scan(make_payload, data)
    infos = [i for i in zipfile.ZipFile(io.BytesIO(data)).infolist() if not i.is_dir()]
    assert [c.filename for c in result.children] == [i.filename for i in infos]
    for child, info in zip(result.children, infos):
        assert child.meta == {"member": info.filename, "size": info.file_size, "compressed_size": info.compress_size,
                              "modified": "2022-12-12T03:12:55Z", "encrypted": False, "crc": info.CRC}
        assert zlib.crc32(child.content) == info.CRC
    assert result.data == {"format": "zip", "members": 4, "extracted": 4,
                           "decompressed": sum(i.file_size for i in infos)}


def test_gzip_name_and_time_from_header(make_payload) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile("inner.txt", "wb", fileobj=buffer, mtime=1_700_000_000) as stream:
        stream.write(LOREM)
    result = scan(make_payload, buffer.getvalue(), "application/gzip", "outer.gz")
    [child] = result.children
    assert child.content == LOREM and child.filename == "inner.txt"
    assert child.meta == {"member": "inner.txt", "size": len(LOREM), "compressed_size": len(buffer.getvalue()),
                          "modified": "2023-11-14T22:13:20Z", "encrypted": False, "crc": zlib.crc32(LOREM)}
    bare = scan(make_payload, gzip.compress(LOREM, mtime=0), "application/x-gzip", "archive.tgz")
    assert bare.children[0].filename == "archive.tar" and bare.children[0].meta["modified"] is None


@pytest.mark.parametrize("fmt,compress,mime", [
    ("gzip", gzip.compress, "application/gzip"),
    ("bzip2", bz2.compress, "application/x-bzip2"),
    ("xz", lzma.compress, "application/x-xz"),
])
def test_streams(make_payload, fmt: str, compress, mime: str) -> None:
    two = compress(LOREM) + compress(b"second stream")  # concatenated streams: one child, as the stdlib reads
    result = scan(make_payload, two, mime, "x.bin")
    assert [c.content for c in result.children] == [LOREM + b"second stream"]
    assert result.data == {"format": fmt, "members": 1, "extracted": 1,
                           "decompressed": len(LOREM + b"second stream")} and result.flags == []
    typed_by_magic = scan(make_payload, compress(LOREM), "application/octet-stream")
    assert typed_by_magic.data["format"] == fmt and typed_by_magic.children[0].content == LOREM


@pytest.mark.parametrize("fmt,compress,mime,suffix", [
    ("lzma", lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE), "application/x-lzma", ".lzma"),
    ("zlib", zlib.compress, "application/zlib", ".zz"),
])
def test_stdlib_streams_without_magic(make_payload, fmt: str, compress, mime: str, suffix: str) -> None:
    data = compress(LOREM)
    result = scan(make_payload, data, mime, "notes.txt" + suffix)
    assert [(c.filename, c.content) for c in result.children] == [("notes.txt", LOREM)]
    assert result.data == {"format": fmt, "members": 1, "extracted": 1, "decompressed": len(LOREM)}
    assert result.flags == []
    cut = scan(make_payload, compress(random.Random(3).randbytes(200_000))[:100_000], mime)
    assert cut.flags == ["corrupt:truncated"] and 0 < len(cut.children[0].content) < 200_000
    bomb = scan(make_payload, compress(b"\x00" * (4 * MiB)), mime, max_member_bytes=MiB)
    assert bomb.children == [] and bomb.flags == ["limit:member-bytes", "ratio:high"]


def test_mimes_and_accepts(make_payload) -> None:
    assert DecompressPlugin.mimes == {
        "application/zip", "application/x-zip-compressed", "application/gzip", "application/x-gzip",
        "application/x-bzip2", "application/x-xz", "application/x-tar",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/x-lzma", "application/zlib", "application/x-lzip", "application/zstd",
        "application/x-7z-compressed", "application/x-rar", "application/vnd.rar", "application/x-rar-compressed",
        "application/vnd.ms-cab-compressed", "application/x-iso9660-image", "application/x-cpio",
        "application/x-archive", "application/vnd.debian.binary-package",
        "application/x-rpm", "application/x-xar", "application/x-virtualbox-vhd", "application/x-lzh-compressed",
        "application/x-lha", "application/x-ace-compressed", "application/x-apple-diskimage"} | set(UNSUPPORTED)
    assert not DecompressPlugin.mimes & {"application/x-msi", "application/msword", "application/vnd.ms-excel"}
    plugin = DecompressPlugin()
    assert not plugin.accepts(make_payload(b"just text", "text/plain"))
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("a")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"a"))
    assert plugin.accepts(make_payload(tar.getvalue(), "application/octet-stream"))


def test_not_an_archive_raises(make_payload) -> None:
    plugin = DecompressPlugin()
    for mime, error in (("application/zip", zipfile.BadZipFile), ("application/gzip", gzip.BadGzipFile),
                        ("application/x-tar", tarfile.ReadError), ("application/x-xz", lzma.LZMAError),
                        ("application/x-bzip2", OSError)):
        with pytest.raises(error):
            plugin.scan(make_payload(b"definitely not an archive" * 30, mime), plugin.options)


# --- zip features -----------------------------------------------------------------------------------

def test_zip_directories_and_symlinks_are_not_children(make_payload) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("dir/", b"")
        archive.writestr("dir/file.txt", b"file")
        link = zipfile.ZipInfo("dir/link")
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        archive.writestr(link, b"/etc/passwd")
    result = scan(make_payload, buffer.getvalue())
    assert [(c.filename, c.content) for c in result.children] == [("dir/file.txt", b"file")]
    assert result.data == {"format": "zip", "members": 1, "extracted": 1, "decompressed": len(b"file")}


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                         zipfile.ZIP_LZMA])
def test_zip_methods(make_payload, compression: int) -> None:
    members = {"a.txt": LOREM, "b.bin": bytes(range(256)) * 50, "empty": b""}
    result = scan(make_payload, make_zip(members, compression))
    assert {c.filename: c.content for c in result.children} == members
    assert result.flags == []


def test_zipcrypto_passwords(make_payload) -> None:
    data = encrypted_zip(b"infected", {b"secret.txt": LOREM, b"other.bin": b"\x01\x02" * 100})
    result = scan(make_payload, data)
    assert [(c.filename, c.content, c.meta["encrypted"]) for c in result.children] == [
        ("secret.txt", LOREM, True), ("other.bin", b"\x01\x02" * 100, True)]
    assert result.flags == []
    custom = scan(make_payload, encrypted_zip(b"s3cret", {b"x": LOREM}), passwords=["wrong", "s3cret"])
    assert [c.content for c in custom.children] == [LOREM]

    none = scan(make_payload, data, passwords=["nope", "also-wrong"])
    assert none.children == [] and none.flags == ["password:none-worked"]
    assert none.data == {"format": "zip", "members": 2, "extracted": 0, "decompressed": 0}  # check bytes fail
    assert scan(make_payload, data, passwords=[]).flags == ["password:none-worked"]


def test_overlapping_entries_are_flagged_and_not_extracted(make_payload) -> None:
    bomb, names = overlapping_bomb(files=10, kernel_size=1 * MiB)
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:  # the stdlib of 3.11 would inflate it all
        sizes = [len(archive.read(name.decode())) for name in names]
    assert sizes[-1] == MiB and sum(sizes) > 10 * MiB
    result = scan(make_payload, bomb)
    assert result.flags == ["zip:overlapping-entries"]
    assert result.children == [] and result.data == {"format": "zip", "members": 10, "extracted": 0,
                                                     "decompressed": 0}


def test_overlapping_entries_spare_the_others(make_payload) -> None:
    normal = local_header(b"normal.txt", 0, zlib.crc32(LOREM), len(LOREM), len(LOREM)) + LOREM
    entry = (b"normal.txt", 0, 0, zlib.crc32(LOREM), len(LOREM), len(LOREM), 0)
    bomb, _ = overlapping_bomb(files=3, kernel_size=64 * 1024, prefix=normal, prefix_entries=(entry,))
    result = scan(make_payload, bomb)
    assert [(c.filename, c.content) for c in result.children] == [("normal.txt", LOREM)]
    assert result.flags == ["zip:overlapping-entries"]

    same = central([entry, (b"normal.txt", 0, 0, zlib.crc32(LOREM), len(LOREM), len(LOREM), 0)], normal)
    twice = scan(make_payload, same)  # two entries sharing one local header
    assert twice.children == [] and twice.flags == ["zip:overlapping-entries"]


def test_zip_ratio_bomb(make_payload) -> None:
    zeros = b"\x00" * (8 * MiB)
    data = make_zip({"zeros.bin": zeros, "small.txt": LOREM})
    result = scan(make_payload, data)
    assert [sha(c.content) for c in result.children] == [sha(zeros), sha(LOREM)]
    assert result.flags == ["ratio:high"]
    capped = scan(make_payload, data, max_member_bytes=MiB)
    assert [c.filename for c in capped.children] == ["small.txt"]
    assert capped.flags == ["limit:member-bytes", "ratio:high"]
    # read a MiB at a time: the zeros were dropped once past the cap, at 2 MiB; all counted
    assert capped.data == {"format": "zip", "members": 2, "extracted": 1, "decompressed": 2 * MiB + len(LOREM)}
    assert scan(make_payload, data, ratio_flag=100_000).flags == []


def test_zip_bzip2_bomb_is_bounded(make_payload) -> None:
    data = make_zip({"zeros.bin": b"\x00" * (32 * MiB)}, zipfile.ZIP_BZIP2)
    result = scan(make_payload, data, max_member_bytes=MiB)
    assert result.children == [] and result.flags == ["limit:member-bytes", "ratio:high"]


def test_zip_total_and_member_count_caps(make_payload) -> None:
    rng = random.Random(7)
    blobs = {f"blob{i}": rng.randbytes(600 * 1024) for i in range(3)}
    result = scan(make_payload, make_zip(blobs, zipfile.ZIP_STORED), max_total_bytes=MiB)
    assert [c.content for c in result.children] == [blobs["blob0"]]
    assert result.flags == ["limit:total-bytes"]

    many = {f"m{i:02d}.txt": b"member %d" % i for i in range(30)}
    counted = scan(make_payload, make_zip(many), max_members=10)
    assert [c.filename for c in counted.children] == [f"m{i:02d}.txt" for i in range(10)]
    assert counted.flags == ["limit:members"]
    assert counted.data == {"format": "zip", "members": 10, "extracted": 10,
                            "decompressed": sum(len(b"member %d" % i) for i in range(10))}


def test_truncated_zip_recovers_complete_members(make_payload) -> None:
    members = {"a.txt": LOREM, "b.bin": bytes(range(256)) * 40, "c.bin": random.Random(1).randbytes(50_000)}
    data = make_zip(members)
    cut = data[:data.index(b"c.bin") + 5 + 20_000]  # inside c.bin's data: no central directory left
    result = scan(make_payload, cut)
    assert [(c.filename, c.content) for c in result.children] == [("a.txt", LOREM), ("b.bin", members["b.bin"])]
    assert result.flags == ["corrupt:central-directory", "corrupt:truncated"]
    with pytest.raises(zipfile.BadZipFile):
        scan(make_payload, data[:20])


def test_truncated_streamed_zip_with_data_descriptors(make_payload) -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.data += b
            return len(b)

    sink = Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (("one.txt", LOREM), ("two.txt", LOREM[::-1]), ("three.txt", LOREM * 3)):
            with archive.open(name, "w") as member:
                member.write(content)
    data = bytes(sink.data)
    assert struct.unpack_from("<H", data, 6)[0] & 0x08  # sizes follow the data, not in the header
    result = scan(make_payload, data[:data.index(b"three.txt") + 40])
    assert [(c.filename, c.content) for c in result.children] == [("one.txt", LOREM), ("two.txt", LOREM[::-1])]
    assert "corrupt:truncated" in result.flags


def test_corrupt_member_is_flagged(make_payload) -> None:
    data = bytearray(make_zip({"good.txt": b"good", "bad.txt": LOREM}, zipfile.ZIP_STORED))
    position = data.index(LOREM[:20], data.index(b"bad.txt"))
    data[position] ^= 0xFF  # the CRC no longer matches
    result = scan(make_payload, bytes(data))
    assert [c.filename for c in result.children] == ["good.txt"]
    assert result.flags == ["corrupt:member"]


# --- names are metadata -----------------------------------------------------------------------------

TRAVERSAL = ["../../etc/x", "/abs", "C:\\x", "..\\..\\windows\\x.dll"]


def test_traversal_names_only_appear_as_metadata(make_payload, tmp_path: Path, monkeypatch) -> None:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for name in TRAVERSAL:
            info = tarfile.TarInfo(name)
            info.size = len(name)
            archive.addfile(info, io.BytesIO(name.encode()))
    archives = {"application/zip": make_zip({n: n.encode() for n in TRAVERSAL}),
                "application/x-tar": tar.getvalue()}

    def refuse(*args, **kwargs):
        raise AssertionError(f"a file was opened: {args}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(os, "open", refuse)
    results = {mime: scan(make_payload, data, mime) for mime, data in archives.items()}
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    for result in results.values():
        assert [c.filename for c in result.children] == TRAVERSAL
        assert [c.meta["member"] for c in result.children] == TRAVERSAL
        assert [c.content for c in result.children] == [n.encode() for n in TRAVERSAL]


# --- streams ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compress,mime", [(gzip.compress, "application/gzip"), (bz2.compress, "application/x-bzip2"),
                                           (lzma.compress, "application/x-xz")])
def test_stream_bombs_stop_at_the_caps(make_payload, compress, mime: str) -> None:
    bomb = compress(b"\x00" * (48 * MiB))
    member = scan(make_payload, bomb, mime, max_member_bytes=4 * MiB)
    assert member.children == [] and member.flags == ["limit:member-bytes", "ratio:high"]
    assert member.data["members"] == 1 and member.data["extracted"] == 0
    total = scan(make_payload, bomb, mime, max_total_bytes=8 * MiB)
    assert total.children == [] and total.flags == ["limit:total-bytes", "ratio:high"]


def test_truncated_gzip_gives_what_was_read(make_payload) -> None:
    text = b"".join(b"line %06d of a long text\n" % i for i in range(20_000))
    data = gzip.compress(text)
    result = scan(make_payload, data[:len(data) // 2], "application/gzip")
    [child] = result.children
    assert 0 < len(child.content) < len(text) and text.startswith(child.content)
    assert result.flags == ["corrupt:truncated"]
    with pytest.raises(EOFError):
        DecompressPlugin().scan(make_payload(data[:12], "application/gzip"), DecompressPlugin.Options())


# --- tar ----------------------------------------------------------------------------------------------

def test_tar_regular_files_only(make_payload) -> None:
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        for name, kind in (("dir", tarfile.DIRTYPE), ("dir/link", tarfile.SYMTYPE), ("dir/hard", tarfile.LNKTYPE),
                           ("dev/null", tarfile.CHRTYPE), ("fifo", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            archive.addfile(info)
        info = tarfile.TarInfo("dir/file.txt")
        info.size, info.mtime = len(LOREM), 1_600_000_000
        archive.addfile(info, io.BytesIO(LOREM))
    result = scan(make_payload, tar.getvalue(), "application/x-tar")
    [child] = result.children
    assert (child.filename, child.content) == ("dir/file.txt", LOREM)
    assert child.meta == {"member": "dir/file.txt", "size": len(LOREM), "compressed_size": len(LOREM),
                          "modified": "2020-09-13T12:26:40Z", "encrypted": False, "crc": None}
    assert result.data == {"format": "tar", "members": 1, "extracted": 1, "decompressed": len(LOREM)}


def test_truncated_tar(corpus: Path, make_payload) -> None:
    data = (corpus / "test.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        regular = [m for m in archive.getmembers() if m.isreg()]
    cut = data[:regular[1].offset_data + 100]  # inside the second member's data
    result = scan(make_payload, cut, "application/x-tar")
    assert [c.filename for c in result.children] == [regular[0].name]
    assert result.flags == ["corrupt:truncated"]


def test_tar_damaged_header_after_the_first(corpus: Path, make_payload) -> None:
    data = bytearray((corpus / "test.tar").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as archive:
        regular = [m for m in archive.getmembers() if m.isreg()]
    second = regular[1].offset
    data[second:second + 100] = b"\xff" * 100  # tarfile stops there without a word
    result = scan(make_payload, bytes(data), "application/x-tar")
    assert [c.filename for c in result.children] == [m.name for m in regular if m.offset < second]
    assert result.flags == ["corrupt:data"]
    clean_end = scan(make_payload, (corpus / "test.tar").read_bytes(), "application/x-tar")
    assert clean_end.flags == []


def test_zip_with_unreadable_central_directory_is_recovered(make_payload) -> None:
    data = bytearray(make_zip({"a.txt": LOREM, "b.txt": b"bee"}))
    directory = data.index(b"PK\x01\x02")
    data[directory + 6] = 99  # "version needed to extract" 9.9: zipfile refuses the whole archive
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(io.BytesIO(bytes(data)))
    result = scan(make_payload, bytes(data))
    assert [(c.filename, c.content) for c in result.children] == [("a.txt", LOREM), ("b.txt", b"bee")]
    assert result.flags == ["corrupt:central-directory"]


# --- decoder memory (xz, lzma, LZMA zip members) -----------------------------------------------------

def xz_asking(dict_byte: int, data: bytes = LOREM) -> bytes:
    """An xz stream of ``data`` whose block header declares the LZMA2 dictionary ``dict_byte``
    (40: 4 GiB - 1), its CRC32 fixed: a crafted header that asks liblzma for that much memory."""
    xz = bytearray(lzma.compress(data))
    size = (xz[12] + 1) * 4
    header = xz[12:12 + size]
    assert (header[1], header[2], header[3]) == (0, 0x21, 1)  # no sizes, one filter: LZMA2, 1 property byte
    header[4] = dict_byte
    header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
    xz[12:12 + size] = header
    return bytes(xz)


def test_xz_asking_for_gigabytes_is_refused_and_flagged(make_payload) -> None:
    honest = xz_asking(0x16)  # 8 MiB, what preset 6 writes: liblzma's own header, unchanged
    assert honest == lzma.compress(LOREM)
    greedy = xz_asking(40)
    with pytest.raises(lzma.LZMAError, match="Memory usage limit"):  # liblzma's own check, same limit
        lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=128 * MiB).decompress(greedy)
    result = scan(make_payload, greedy, "application/x-xz")
    assert result.children == [] and result.flags == ["limit:lzma-memory"]
    assert result.data == {"format": "xz", "members": 1, "extracted": 0, "decompressed": 0}
    # An honest 8 MiB dictionary needs ~9 MiB to decode: refused under 4 MiB, read under the default.
    assert scan(make_payload, honest, "application/x-xz", max_lzma_memory=4 * MiB).flags == ["limit:lzma-memory"]
    assert [c.content for c in scan(make_payload, honest, "application/x-xz").children] == [LOREM]


def test_a_greedy_stream_after_an_honest_one_keeps_the_first(make_payload) -> None:
    result = scan(make_payload, lzma.compress(b"first stream") + xz_asking(40), "application/x-xz")
    assert [c.content for c in result.children] == [b"first stream"]
    assert result.flags == ["limit:lzma-memory"]


def test_lzma_alone_asking_for_gigabytes_is_refused_and_flagged(make_payload) -> None:
    data = bytearray(lzma.compress(LOREM, format=lzma.FORMAT_ALONE))
    data[1:5] = (0xFFFFFFFF).to_bytes(4, "little")  # header: properties, dictionary size, size
    result = scan(make_payload, bytes(data), "application/x-lzma", "notes.txt.lzma")
    assert result.children == [] and result.flags == ["limit:lzma-memory"]


def test_zip_lzma_member_asking_for_gigabytes_is_refused_and_flagged(make_payload) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("greedy.txt", LOREM, compress_type=zipfile.ZIP_LZMA)
        archive.writestr("plain.txt", b"stored and fine")
    data = bytearray(buffer.getvalue())
    name_len, extra_len = struct.unpack_from("<HH", data, 26)
    props = 30 + name_len + extra_len + 4  # LZMA header: version (2), properties size (2), properties (5)
    assert int.from_bytes(data[props + 1:props + 5], "little") == 1 << 23  # zipfile's dictionary: 8 MiB
    data[props + 1:props + 5] = (0xFFFFFFFF).to_bytes(4, "little")
    result = scan(make_payload, bytes(data))
    assert [(c.filename, c.content) for c in result.children] == [("plain.txt", b"stored and fine")]
    assert result.flags == ["limit:lzma-memory"]
    # The same through local-header recovery (no central directory).
    recovered = scan(make_payload, bytes(data[:data.find(b"PK\x01\x02")]))
    assert [c.content for c in recovered.children] == [b"stored and fine"]
    assert recovered.flags == ["corrupt:central-directory", "limit:lzma-memory"]


def test_many_tiny_concatenated_xz_streams_are_all_read(make_payload) -> None:
    """20,000 one-byte streams (fed in 64 KiB steps, so each stream boundary copies little)."""
    data = lzma.compress(b"x") * 20_000
    result = scan(make_payload, data, "application/x-xz")
    assert [c.content for c in result.children] == [lzma.LZMAFile(io.BytesIO(data)).read()] == [b"x" * 20_000]
    assert result.flags == []  # 20,000 bytes out of 1.2 MB: no ratio flag


def test_a_member_with_an_empty_name_is_extracted(make_payload) -> None:
    """A central-directory entry whose name is empty (found by the decompress fuzz harness:
    ``ZipInfo.is_dir()`` raises IndexError on it): a member like any other, its bytes as zipfile reads them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(""), b"no name here\n")
        archive.writestr("b.txt", b"named\n")
    data = buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as reference:
        expected = sorted(sha(reference.read(i)) for i in reference.infolist())
    result = scan(make_payload, data)
    assert sorted(sha(c.content) for c in result.children) == expected
