"""The bomb rule of ``decompress``: a member that decompresses at a ratio no real file has (over
``bomb_ratio`` past its first ``bomb_after`` bytes) is abandoned early, flagged ``ratio:bomb``, in every
reader: the in-process streams (gzip, zlib, bzip2, xz, lzma), zip members, and the external tools (7z
watched on disk, bsdtar and bsdcat read from their pipes). Each input holds a real file beside 64 MiB of
zeros; the real file must still be extracted, and with the rule off (``bomb_ratio=0``) the zeros too."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from stoq.plugin import Result
from stoq_plugins.decompress import DecompressPlugin
from stoq_plugins.decompress.budget import BOMB_AFTER, CHUNK, Caps, Unpacker
from stoq_plugins.decompress.streams import unpack_stream

MiB = 1 << 20
ZEROS = bytes(64 * MiB)
REAL = Path(__file__).read_bytes()  # a real file: this test's own source
pytestmark = pytest.mark.usefixtures("scratch_parent")


def scan(make_payload, data: bytes, mime: str, **options: object) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    return plugin.scan(make_payload(data, mime, None), plugin.options)


def sha(contents: list[bytes]) -> list[str]:
    return sorted(hashlib.sha256(c).hexdigest() for c in contents)


STREAMS = {
    "application/gzip": lambda d: gzip.compress(d, 6),
    "application/zlib": lambda d: zlib.compress(d, 9),
    "application/x-bzip2": bz2.compress,
    "application/x-xz": lzma.compress,
    "application/x-lzma": lambda d: lzma.compress(d, lzma.FORMAT_ALONE),
}


@pytest.mark.parametrize("mime", list(STREAMS))
def test_streams(make_payload, mime: str) -> None:
    data = STREAMS[mime](ZEROS)
    bomb = scan(make_payload, data, mime)
    assert bomb.children == [] and bomb.flags == ["ratio:bomb", "ratio:high"]
    unpacker = Unpacker(Caps(256 * MiB, 512 * MiB, 10, 100))
    fmt = bomb.data["format"]
    unpack_stream(fmt, data, None, unpacker)
    # abandoned past its first 8 MiB, not at the 64 MiB end (liblzma may hold 16 KiB of input unread)
    assert BOMB_AFTER < unpacker.total <= BOMB_AFTER + (20 if fmt in ("xz", "lzma") else 2) * CHUNK
    off = scan(make_payload, data, mime, bomb_ratio=0)
    assert [c.content for c in off.children] == [ZEROS] and off.flags == ["ratio:high"]
    real = scan(make_payload, STREAMS[mime](REAL), mime)
    assert [c.content for c in real.children] == [REAL] and real.flags == []


def test_zip_member(make_payload) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", ZEROS)
        archive.writestr("real.py", REAL)
    bomb = scan(make_payload, buffer.getvalue(), "application/zip")
    assert [c.filename for c in bomb.children] == ["real.py"] and bomb.children[0].content == REAL
    assert bomb.flags == ["ratio:bomb", "ratio:high"]
    off = scan(make_payload, buffer.getvalue(), "application/zip", bomb_ratio=0)
    assert sha([c.content for c in off.children]) == sha([ZEROS, REAL]) and off.flags == ["ratio:high"]


def tool(*argv: str, cwd: Path) -> bytes:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=120).stdout


def files(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "real.py").write_bytes(REAL)
    (tmp_path / "src" / "zeros.bin").write_bytes(ZEROS)
    return tmp_path / "src"


def test_7z_watched_on_disk(tmp_path: Path, make_payload) -> None:
    src = files(tmp_path)
    tool("7z", "a", "-bd", "-ms=off", str(tmp_path / "b.7z"), "real.py", "zeros.bin", cwd=src)
    data = (tmp_path / "b.7z").read_bytes()
    listed = tool("7z", "l", "-slt", "-ba", str(tmp_path / "b.7z"), cwd=tmp_path).decode()
    assert sorted(line[7:] for line in listed.splitlines() if line.startswith("Path = ")) == ["real.py", "zeros.bin"]
    bomb = scan(make_payload, data, "application/x-7z-compressed")
    assert [c.content for c in bomb.children] == [REAL] and "ratio:bomb" in bomb.flags
    off = scan(make_payload, data, "application/x-7z-compressed", bomb_ratio=0)
    assert sha([c.content for c in off.children]) == sha([ZEROS, REAL]) and "ratio:bomb" not in off.flags


def test_xar_through_bsdtar_pipe(tmp_path: Path, make_payload) -> None:
    src = files(tmp_path)
    tool("bsdtar", "--format", "xar", "-cf", str(tmp_path / "b.xar"), "real.py", "zeros.bin", cwd=src)
    data = (tmp_path / "b.xar").read_bytes()
    assert len(data) < MiB  # its members are compressed (zlib)
    assert tool("bsdtar", "-tf", str(tmp_path / "b.xar"), cwd=tmp_path).decode().split() == ["real.py", "zeros.bin"]
    # bsdtar's output is measured against the whole input, and xar deflates (1028:1 at most): the
    # default 1000 is barely passed at the end; half of it is passed past the first 8 MiB
    bomb = scan(make_payload, data, "application/x-xar", bomb_ratio=500)
    assert [c.content for c in bomb.children] == [REAL] and bomb.flags == ["ratio:bomb"]
    off = scan(make_payload, data, "application/x-xar", bomb_ratio=0)
    assert sha([c.content for c in off.children]) == sha([ZEROS, REAL]) and off.flags == []


@pytest.mark.parametrize("argv,mime", [(["zstd", "-q", "-c"], "application/zstd"),
                                       (["lzip", "-c"], "application/x-lzip")])
def test_streams_through_bsdcat(tmp_path: Path, make_payload, argv: list[str], mime: str) -> None:
    src = files(tmp_path)
    data = tool(*argv, "zeros.bin", cwd=src)
    bomb = scan(make_payload, data, mime)
    assert bomb.children == [] and "ratio:bomb" in bomb.flags
    off = scan(make_payload, data, mime, bomb_ratio=0)
    assert [c.content for c in off.children] == [ZEROS] and "ratio:bomb" not in off.flags
