"""zstd read in process by the ``zstandard`` library (the ``bsdcat`` tool is the fallback without it):
the children are what the reference ``zstd -dc`` writes, on frames made by ``zstd`` itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import zstandard

from stoq.plugin import Result
from stoq_plugins.decompress import DecompressPlugin
from stoq_plugins.decompress.budget import Caps, Unpacker
from stoq_plugins.decompress.tools import unpack_tool

MiB = 1 << 20
TEXT = b"".join(b"line %06d of a long text\n" % i for i in range(100_000))
pytestmark = pytest.mark.usefixtures("scratch_parent")


def zstd(*args: str, data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", *args], input=data, capture_output=True, check=True, timeout=60).stdout


def reference(data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["zstd", "-dc", "--memory=128MB"], input=data, capture_output=True, timeout=60)


def scan(make_payload, data: bytes, **options: object) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    return plugin.scan(make_payload(data, "application/zstd", "a.tar.zst"), plugin.options)


def skippable(content: bytes) -> bytes:
    return (0x184D2A5A).to_bytes(4, "little") + len(content).to_bytes(4, "little") + content


@pytest.mark.parametrize("make", [
    lambda: zstd("-19", data=TEXT),
    lambda: zstd(data=TEXT) + zstd("-1", data=b"second frame"),  # concatenated frames: one child
    lambda: skippable(b"metadata") + zstd(data=TEXT) + skippable(b"more"),
    lambda: zstd("--no-check", data=b""),
    lambda: zstd(data=(Path(__file__).parents[2] / "pyproject.toml").read_bytes()),
])
def test_children_are_what_zstd_writes(make_payload, make) -> None:
    data = make()
    expected = reference(data)
    assert expected.returncode == 0
    result = scan(make_payload, data, ratio_flag=1e6)
    assert [(c.filename, c.content) for c in result.children] == [("a.tar", expected.stdout)]
    assert result.flags == [] and result.data["decompressed"] == len(expected.stdout)


def test_damage(make_payload) -> None:
    packed = zstd(data=TEXT)
    cut = scan(make_payload, packed[:len(packed) // 2], ratio_flag=1e6)
    assert reference(packed[:len(packed) // 2]).returncode != 0  # zstd: truncated too
    assert cut.flags == ["corrupt:truncated"] and TEXT.startswith(cut.children[0].content)
    assert 0 < len(cut.children[0].content) < len(TEXT)
    tail = scan(make_payload, packed + b"not a frame at all", ratio_flag=1e6)
    assert reference(packed + b"not a frame at all").returncode != 0  # zstd: unknown header
    assert [c.content for c in tail.children] == [TEXT] and tail.flags == ["corrupt:data"]
    for junk in (b"\x28\xb5\x2f\xfd" + b"junk" * 30, b"definitely not an archive\n" * 30):
        assert reference(junk).returncode != 0
        with pytest.raises(zstandard.ZstdError):  # nothing read: an error entry
            scan(make_payload, junk)


def test_a_window_past_the_decoder_memory_limit_is_refused(make_payload) -> None:
    big = zstd("--long=28", "-1", data=TEXT * 4)  # a 256 MiB window
    assert reference(big).returncode != 0  # the reference refuses it under 128 MB too
    refused = scan(make_payload, big, ratio_flag=1e6)
    assert refused.children == [] and refused.flags == ["limit:lzma-memory"]
    allowed = scan(make_payload, big, max_lzma_memory=256 * MiB, ratio_flag=1e6)
    assert [c.content for c in allowed.children] == [TEXT * 4]


def test_the_bsdcat_fallback_gives_the_same_child() -> None:
    data = zstd(data=TEXT) + zstd("-1", data=b"second frame")
    unpacker = Unpacker(Caps(256 * MiB, 512 * MiB, 1000, 100))
    unpack_tool("zstd", data, "a.tar.zst", unpacker, 60)
    assert [(m.name, m.content) for m in unpacker.members] == [("a.tar", TEXT + b"second frame")]
