"""The ``decompress`` formats read by external tools (7z, unar, bsdtar, bsdcat), on hostile input made
here with the real tools: names stay metadata, caps and passwords apply, scratch directories go away."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import magic
import pytest

from helpers import EXPECTED_CHILDREN
from stoq.plugin import Result
from stoq_plugins.decompress import FORMATS, DecompressPlugin, detect
from stoq_plugins.decompress import tools as tool_module
from stoq_plugins.decompress.formats import declared_size
from stoq_plugins.decompress.tools import Entry, ToolError, key, list_7z

MiB = 1 << 20
SEVEN, CPIO, AR = "application/x-7z-compressed", "application/x-cpio", "application/x-archive"
RAR, CAB = "application/x-rar", "application/vnd.ms-cab-compressed"
LOREM = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 40


pytestmark = [pytest.mark.usefixtures("scratch_parent"),  # tools' scratch dirs must be gone after each test
              pytest.mark.tools("7z", "unar", "lsar", "bsdtar", "bsdcat", "lzip", "zstd")]


def scan(make_payload, content: bytes, mime: str, filename: str | None = None, **options) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    payload = make_payload(content, mime, filename)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tool(*argv: str, cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=60)


def tree(files: dict[str, bytes], where: Path) -> Path:
    where.mkdir()
    for name, content in files.items():
        (where / name).write_bytes(content)
    return where


def seven(tmp_path: Path, files: dict[str, bytes], *switches: str, name: str = "a.7z") -> bytes:
    src = tree(files, tmp_path / ("src-" + name))
    tool("7z", "a", "-bso0", "-bsp0", *switches, str(tmp_path / name), *files, cwd=src)
    return (tmp_path / name).read_bytes()


def ar_member(name: str, content: bytes) -> bytes:
    """A BSD-style ar member whose (long) name precedes its data: the name is kept whole, slashes too."""
    raw = name.encode()
    header = (b"#1/%-13d" % len(raw) + b"%-12d" % 0 + b"%-6d" % 0 + b"%-6d" % 0 + b"%-8s" % b"100644"
              + b"%-10d" % (len(raw) + len(content)) + b"`\n")
    body = raw + content
    return header + body + b"\n" * (len(body) % 2)


# --- corpus and routing ---------------------------------------------------------------------------------

def test_corpus_containers_route_by_libmagic_mime(corpus: Path, make_payload) -> None:
    for name, expected in sorted(EXPECTED_CHILDREN.items()):
        data = (corpus / name).read_bytes()
        mime = magic.from_buffer(data, mime=True)
        assert mime in FORMATS, (name, mime)
        result = scan(make_payload, data, mime, name)
        assert Counter(sha(c.content) for c in result.children) == Counter(expected["children"]), name
    for name in ("test.msi", "test.doc", "test.xls"):  # OLE files are not containers here
        assert magic.from_buffer((corpus / name).read_bytes(), mime=True) not in FORMATS


def test_tool_formats_route_by_magic_bytes(corpus: Path, make_payload) -> None:
    for name, fmt in (("test.7z", "7z"), ("test.rar", "rar"), ("test_zip.cab", "cab"), ("test.cpio", "cpio"),
                      ("test.deb", "ar"), ("test.iso", "iso")):
        assert detect(make_payload((corpus / name).read_bytes(), "application/octet-stream")) == fmt, name


def test_tool_formats_keep_metadata(corpus: Path, make_payload) -> None:
    result = scan(make_payload, (corpus / "test.rar").read_bytes(), RAR, "test.rar")
    listing = subprocess.run(["lsar", str(corpus / "test.rar")], capture_output=True, text=True, check=True)
    names = [n.strip() for n in listing.stdout.splitlines()[1:] if not n.strip().endswith("/")]
    assert sorted(c.filename for c in result.children) == sorted(names)
    child = result.children[0]
    assert child.meta == {"member": child.filename, "size": 4015, "compressed_size": 1484,
                          "modified": "2022-12-12T03:12:55Z", "encrypted": False, "crc": None}
    aes = scan(make_payload, (corpus / "test_aes256_password.zip").read_bytes(), "application/zip")
    assert {c.meta["encrypted"] for c in aes.children} == {True} and aes.flags == []
    assert aes.data == {"format": "zip", "members": 4, "extracted": 4,
                        "decompressed": sum(len(c.content) for c in aes.children)}  # (7z's; zipfile read none)


# --- names are metadata ------------------------------------------------------------------------------

TRAVERSAL = {"../evil": b"evil\n", "/abs": b"abs\n", "ok.txt": b"ok\n"}


def traversal_archive(kind: str, tmp_path: Path) -> tuple[bytes, str]:
    files = {"evil": b"evil\n", "abs": b"abs\n", "ok.txt": b"ok\n"}
    if kind == "cpio":
        src = tree(files, tmp_path / "src")
        tool("bsdtar", "--format", "newc", "-cf", str(tmp_path / "t.cpio"), "-P", "-s", ",^evil$,../evil,",
             "-s", ",^abs$,/abs,", *files, cwd=src)
        return (tmp_path / "t.cpio").read_bytes(), CPIO
    if kind == "ar":  # bsdtar's ar writer keeps base names only: the member headers are written here
        return b"!<arch>\n" + b"".join(ar_member(n, c) for n, c in TRAVERSAL.items()), AR
    data = seven(tmp_path, files)
    tool("7z", "rn", "-bso0", str(tmp_path / "a.7z"), "evil", "../evil", "abs", "/abs", cwd=tmp_path)
    return (tmp_path / "a.7z").read_bytes(), SEVEN


@pytest.mark.parametrize("kind", ["cpio", "ar", "7z"])
def test_traversal_names_only_appear_as_metadata(kind: str, tmp_path: Path, make_payload, monkeypatch,
                                                 scratch_parent: Path) -> None:
    data, mime = traversal_archive(kind, tmp_path)
    work = tmp_path / "work" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = scan(make_payload, data, mime)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert list(work.iterdir()) == [] and list(scratch_parent.iterdir()) == []
    assert not Path("/abs").exists() and not (tmp_path / "work" / "evil").exists()
    got = {c.filename: c.content for c in result.children}
    assert got == TRAVERSAL
    assert sorted(c.meta["member"] for c in result.children) == sorted(TRAVERSAL)
    assert result.flags == []


def test_links_are_not_children_and_are_not_followed(tmp_path: Path, make_payload) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "link").symlink_to(outside)
    (src / "x").write_bytes(b"pwned")
    (src / "real.txt").write_bytes(LOREM)
    tool("7z", "a", "-snl", "-bso0", str(tmp_path / "l.7z"), "link", "x", "real.txt", cwd=src)
    tool("7z", "rn", "-bso0", str(tmp_path / "l.7z"), "x", "link/x", cwd=src)  # a write through the link
    result = scan(make_payload, (tmp_path / "l.7z").read_bytes(), SEVEN)
    assert list(outside.iterdir()) == []
    assert [(c.filename, c.content) for c in result.children] == [("real.txt", LOREM)]
    tool("bsdtar", "--format", "newc", "-cf", str(tmp_path / "l.cpio"), "link", "real.txt", cwd=src)
    cpio = scan(make_payload, (tmp_path / "l.cpio").read_bytes(), CPIO)
    assert [(c.filename, c.content) for c in cpio.children] == [("real.txt", LOREM)] and cpio.flags == []


# --- passwords ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", ["-mhe=off", "-mhe=on"])
def test_7z_passwords(tmp_path: Path, make_payload, headers: str) -> None:
    data = seven(tmp_path, {"secret.txt": LOREM}, "-ps3cret", headers)
    wrong = scan(make_payload, data, SEVEN)
    assert wrong.children == [] and wrong.flags == ["password:none-worked"]
    assert wrong.data == {"format": "7z", "members": 0, "extracted": 0, "decompressed": 0}
    assert scan(make_payload, data, SEVEN, passwords=[]).flags == ["password:none-worked"]
    right = scan(make_payload, data, SEVEN, passwords=["nope", "s3cret"])
    assert [(c.filename, c.content, c.meta["encrypted"]) for c in right.children] == [("secret.txt", LOREM, True)]
    assert right.flags == []


def test_aes_zip_wrong_password(corpus: Path, make_payload) -> None:
    result = scan(make_payload, (corpus / "test_aes256_password.zip").read_bytes(), "application/zip",
                  passwords=["infected"])
    assert result.children == [] and result.flags == ["password:none-worked"]


# --- damage ------------------------------------------------------------------------------------------

def test_truncated_7z_is_flagged(tmp_path: Path, make_payload) -> None:
    files = {f"f{i}.bin": random.Random(i).randbytes(20_000) for i in range(3)}
    data = seven(tmp_path, files, "-ms=off", "-mx=0")
    assert declared_size(data) == len(data)
    result = scan(make_payload, data[:len(data) - 100], SEVEN)  # the headers are at the end
    assert result.children == [] and result.flags == ["corrupt:truncated"]


def test_truncated_cab_is_flagged(corpus: Path, make_payload) -> None:
    data = (corpus / "test_zip.cab").read_bytes()
    assert declared_size(data) == len(data)
    for cut in (100, 5000, len(data) - 10):
        result = scan(make_payload, data[:cut], CAB)
        assert "corrupt:truncated" in result.flags and result.children == []


def test_truncated_rar_gives_what_was_read(corpus: Path, make_payload) -> None:
    data = (corpus / "test.rar").read_bytes()
    result = scan(make_payload, data[:2000], RAR)  # inside the second member's data
    assert [(c.filename, sha(c.content)) for c in result.children] == [
        ("hidden/lorem-hidden.txt", EXPECTED_CHILDREN["test.rar"]["children"][0])]
    assert "corrupt:member" in result.flags


@pytest.mark.parametrize("mime", [SEVEN, RAR, CAB, CPIO, "application/x-iso9660-image", "application/x-lzip"])
def test_not_an_archive_raises(make_payload, mime: str) -> None:
    with pytest.raises(ToolError):
        scan(make_payload, b"definitely not an archive\n" * 30, mime)


# --- caps --------------------------------------------------------------------------------------------

def test_member_count_cap_applies_to_tools(tmp_path: Path, make_payload) -> None:
    files = {f"m{i:02d}.txt": b"member %d" % i for i in range(30)}
    result = scan(make_payload, seven(tmp_path, files), SEVEN, max_members=10)
    assert len(result.children) == 10 and result.flags == ["limit:members"]
    assert {c.content for c in result.children} <= set(files.values())
    src = tmp_path / "src-a.7z"
    tool("bsdtar", "--format", "newc", "-cf", str(tmp_path / "m.cpio"), *files, cwd=src)
    cpio = scan(make_payload, (tmp_path / "m.cpio").read_bytes(), CPIO, max_members=10)
    assert [c.filename for c in cpio.children] == list(files)[:10] and cpio.flags == ["limit:members"]


def test_byte_caps_apply_to_tools(tmp_path: Path, make_payload, monkeypatch) -> None:
    data = seven(tmp_path, {"zeros.bin": bytes(8 * MiB), "small.txt": LOREM}, "-mx=1")
    sizes: list[int] = []
    read = tool_module.Tools._read

    def spy(self, path: str, *args) -> None:
        sizes.append(os.lstat(path).st_size)
        read(self, path, *args)
    monkeypatch.setattr(tool_module.Tools, "_read", spy)
    full = scan(make_payload, data, SEVEN, bomb_ratio=0)  # (8 MiB of zeros past bomb_after: a bomb otherwise)
    assert sorted(sha(c.content) for c in full.children) == sorted([sha(bytes(8 * MiB)), sha(LOREM)])
    assert full.flags == ["ratio:high"]
    member = scan(make_payload, data, SEVEN, max_member_bytes=MiB)
    assert [c.content for c in member.children] == [LOREM] and member.flags == ["limit:member-bytes"]
    assert max(sizes[-2:]) == MiB + 1  # RLIMIT_FSIZE stopped 7z one byte past the cap
    total = scan(make_payload, data, SEVEN, max_total_bytes=MiB)
    assert [c.content for c in total.children] == [LOREM] and total.flags == ["limit:total-bytes"]
    blobs = {f"b{i}": random.Random(i).randbytes(600 * 1024) for i in range(3)}
    src = tree(blobs, tmp_path / "blobs")
    tool("bsdtar", "--format", "newc", "-cf", str(tmp_path / "b.cpio"), *blobs, cwd=src)
    cpio = scan(make_payload, (tmp_path / "b.cpio").read_bytes(), CPIO, max_total_bytes=MiB)
    assert [c.content for c in cpio.children] == [blobs["b0"]] and cpio.flags == ["limit:total-bytes"]


def test_tool_time_limit(tmp_path: Path, make_payload) -> None:
    data = seven(tmp_path, {"zeros.bin": bytes(64 * MiB)}, "-mx=1")
    result = scan(make_payload, data, SEVEN, tool_timeout=0.001)
    assert "limit:tool-time" in result.flags and result.children == []


# --- streams read by bsdcat -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,argv,mime", [("zstd", ["zstd", "-q", "-1", "-c"], "application/zstd"),
                                           ("lzip", ["lzip", "-0", "-c"], "application/x-lzip")])
def test_piped_streams(tmp_path: Path, make_payload, fmt: str, argv: list[str], mime: str) -> None:
    def compress(data: bytes) -> bytes:
        return subprocess.run(argv, input=data, capture_output=True, check=True, timeout=60).stdout

    two = compress(LOREM) + compress(b"second stream")
    result = scan(make_payload, two, mime, "notes.txt" + {"zstd": ".zst", "lzip": ".lz"}[fmt])
    assert [(c.filename, c.content) for c in result.children] == [("notes.txt", LOREM + b"second stream")]
    assert result.data == {"format": fmt, "members": 1, "extracted": 1,
                           "decompressed": len(LOREM + b"second stream")} and result.flags == []
    assert scan(make_payload, compress(LOREM), "application/octet-stream").data["format"] == fmt
    bomb = scan(make_payload, compress(bytes(8 * MiB)), mime, max_member_bytes=MiB)
    assert bomb.children == [] and bomb.flags == ["limit:member-bytes", "ratio:high"]
    text = b"".join(b"line %06d of a long text\n" % i for i in range(100_000))
    packed = compress(text)
    cut = scan(make_payload, packed[:len(packed) // 2], mime, ratio_flag=1e6)
    assert cut.flags == ["corrupt:truncated"] and text.startswith(cut.children[0].content)
    assert 0 < len(cut.children[0].content) < len(text)


def test_a_tool_asked_for_too_much_memory_is_stopped_and_flagged(make_payload) -> None:
    """An lzip header asking for a 512 MiB dictionary (code 0x1D; lzip -0 writes 0x0C, 4 KiB): under
    ``tool_memory`` = 256 MiB (RLIMIT_AS) liblzma in bsdcat cannot allocate it; under the default
    (1 GiB) the stream is read, the dictionary being allocated but barely touched."""
    packed = bytearray(subprocess.run(["lzip", "-0", "-c"], input=LOREM, capture_output=True, check=True,
                                      timeout=60).stdout)
    assert packed[:6] == b"LZIP\x01\x0c"
    packed[5] = 0x1D
    greedy = scan(make_payload, bytes(packed), "application/x-lzip", tool_memory=256 * MiB)
    assert greedy.children == [] and greedy.flags == ["limit:tool-memory"]
    assert greedy.data == {"format": "lzip", "members": 1, "extracted": 0, "decompressed": 0}
    default = scan(make_payload, bytes(packed), "application/x-lzip")
    assert [c.content for c in default.children] == [LOREM] and default.flags == []


def test_the_tools_run_under_the_memory_limit(tmp_path: Path) -> None:
    """What the tool process gets: RLIMIT_AS at ``tool_memory``, RLIMIT_FSIZE, no core dumps."""
    from stoq_plugins.decompress.budget import Caps, Unpacker
    from stoq_plugins.decompress.tools import Tools

    tools = Tools(Unpacker(Caps(1000, 2000, 10, 100.0, tool_memory=300 * MiB)), 10)
    probe = "import resource as r; print(*(r.getrlimit(x)[0] for x in (r.RLIMIT_AS, r.RLIMIT_FSIZE, r.RLIMIT_CORE)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          preexec_fn=tools._preexec())
    assert done.stdout.split() == [str(300 * MiB), "1001", "0"]


# --- helpers -------------------------------------------------------------------------------------------

def test_key_and_listing_parser() -> None:
    assert key("../../etc/x") == "etc/x" and key("/abs") == "abs" and key("..\\a\\.\\b") == "a/b"
    listing = ("Path = dir\nSize = 0\nAttributes = D\n\nPath = dir/a.txt\nSize = 12\nPacked Size = 7\n"
               "Modified = 2022-12-12 03:12:55.4995694\nAttributes = A\nEncrypted = +\n\n"
               "Path = b\nSize = \nModified = \nAttributes = A_ -rw-r--r--\n")
    assert list_7z(listing) == [Entry("dir/a.txt", 12, 7, "2022-12-12T03:12:55Z", True),
                                Entry("b", None, None, None, False)]
    assert declared_size(b"not 7z") is None
