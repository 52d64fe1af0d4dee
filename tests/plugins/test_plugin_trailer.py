"""The ``trailer`` carver: bytes appended to corpus images, PDFs, zips and PEs, made here, come out as one
child at the offset where the host file ends (known by construction, or from pefile for a PE overlay), end
markers inside the host's own data do not stop the walk, and an appended archive is extracted by a scan."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pefile
import pytest

from helpers import CORPUS, make_zip, validate
from stoq.config import load_settings
from stoq.engine import Engine
from stoq.plugin import Result
from stoq_plugins._trailer import logical_end
from stoq_plugins.trailer import TrailerPlugin

HIDDEN = make_zip({"hidden.txt": b"an archive behind an image\n" * 4})


def scan(make_payload, content: bytes, mime: str, **options) -> Result:
    plugin = TrailerPlugin(TrailerPlugin.Options(**options))
    payload = make_payload(content, mime, None)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def assert_trailer(result: Result, fmt: str, offset: int, trailer: bytes) -> None:
    assert result.flags == []
    assert result.data == {"format": fmt, "end": offset, "trailer": len(trailer), "carved": 1, "padding": 0}
    [child] = result.children
    assert child.content == trailer
    assert child.meta == {"offset": offset, "size": len(trailer), "format": fmt}


@pytest.mark.parametrize("name,fmt,mime", [
    ("test.jpg", "jpeg", "image/jpeg"), ("test.png", "png", "image/png"), ("test.pdf", "pdf", "application/pdf"),
    ("test.zip", "zip", "application/zip"), ("test.exe", "pe", "application/vnd.microsoft.portable-executable"),
])
def test_an_appended_zip_is_the_child(make_payload, name: str, fmt: str, mime: str) -> None:
    host = (CORPUS / name).read_bytes()
    clean = scan(make_payload, host, mime)
    assert clean.children == [] and clean.data["end"] == len(host) and clean.data["trailer"] == 0
    assert_trailer(scan(make_payload, host + HIDDEN, mime), fmt, len(host), HIDDEN)


def test_a_pe_overlay_starts_where_pefile_says(make_payload) -> None:
    data = (CORPUS / "test_xor.exe").read_bytes() + HIDDEN
    start = pefile.PE(data=data).get_overlay_data_start_offset()  # the reference
    assert start == len(data) - len(HIDDEN)
    result = scan(make_payload, data, "application/x-dosexec")
    assert_trailer(result, "pe", start, HIDDEN)
    assert result.children[0].filename == f"overlay_{start:08x}.bin"


def test_the_gif_trailer_byte_is_found_by_walking_blocks(make_payload) -> None:
    """The corpus GIF holds ``3B`` bytes in its image data, and ends with ``foobar\\n`` after its trailer."""
    data = (CORPUS / "test.gif").read_bytes()
    end = data.rindex(b";") + 1
    assert data[end:] == b"foobar\n" and data.index(b";") < end - 1
    short = scan(make_payload, data, "image/gif")  # 7 bytes: reported, not carved
    assert short.children == [] and short.data == {"format": "gif", "end": end, "trailer": 7, "carved": 0,
                                                   "padding": 0}
    assert_trailer(scan(make_payload, data + HIDDEN, "image/gif"), "gif", end, data[end:] + HIDDEN)


def jpeg_with_thumbnail(jpeg: bytes) -> bytes:
    """``jpeg`` with an APP1 segment holding a whole small JPEG (an Exif thumbnail: its own ``FF D9``)."""
    thumbnail = b"\xff\xd8\xff\xdb\x00\x04\x00\x00\xff\xd9"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(thumbnail)) + b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + app1 + jpeg[2:]


def test_jpeg_end_is_its_eoi_not_the_first_ffd9(make_payload) -> None:
    host = jpeg_with_thumbnail((CORPUS / "test.jpg").read_bytes())
    assert host.index(b"\xff\xd9") < len(host) - 2  # a search for the marker would stop in the thumbnail
    assert_trailer(scan(make_payload, host + HIDDEN, "image/jpeg"), "jpeg", len(host), HIDDEN)


def test_pdf_incremental_update_and_png_with_iend_in_a_chunk(make_payload) -> None:
    pdf = (CORPUS / "test.pdf").read_bytes()
    updated = pdf + b"1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\r\n"
    assert_trailer(scan(make_payload, updated + HIDDEN, "application/pdf"), "pdf", len(updated), HIDDEN)
    png = (CORPUS / "test.png").read_bytes()
    text = b"tEXt" + b"Comment\x00IEND" + bytes(20)
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    host = png[:33] + chunk + png[33:]  # after IHDR: a text chunk that says IEND
    assert_trailer(scan(make_payload, host + HIDDEN, "image/png"), "png", len(host), HIDDEN)


def test_zip_end_is_its_own_directory_not_the_appended_ones(make_payload) -> None:
    inner = make_zip({"note.txt": b"PK\x05\x06 in a stored member is not an end record"})
    host = make_zip({"a.txt": b"a" * 100})
    assert_trailer(scan(make_payload, host + inner, "application/zip"), "zip", len(host), inner)


def test_padding_tiny_trailers_and_caps(make_payload) -> None:
    jpeg = (CORPUS / "test.jpg").read_bytes()
    padded = scan(make_payload, jpeg + bytes(4096), "image/jpeg")
    assert padded.children == [] and padded.data["padding"] == 4096 and padded.data["trailer"] == 4096
    pattern = scan(make_payload, jpeg + b"\xde\xad\xbe\xef" * 4096, "image/jpeg")  # a repeated pattern: padding too
    assert pattern.children == [] and pattern.data["padding"] == 16384
    block = random.Random(5).randbytes(8192) * 256  # 2 MiB of an 8 KiB block repeated, after a zip: left out
    behind = scan(make_payload, jpeg + HIDDEN + block, "image/jpeg")
    assert behind.children[0].content == HIDDEN and behind.data["padding"] == len(block)
    assert behind.children[0].meta == {"offset": len(jpeg), "size": len(HIDDEN), "format": "jpeg"}
    tiny = scan(make_payload, jpeg + b"\x01\x02\x03", "image/jpeg", min_size=4)
    assert tiny.children == [] and tiny.data["trailer"] == 3
    cut = scan(make_payload, jpeg + HIDDEN, "image/jpeg", max_size=100)
    assert cut.flags == ["limit:trailer-size"] and cut.children[0].content == HIDDEN[:100]
    assert cut.children[0].meta["size"] == len(HIDDEN)
    steps = scan(make_payload, jpeg + HIDDEN, "image/jpeg", max_steps=3)
    assert steps.flags == ["limit:trailer-steps"] and steps.children == [] and steps.data["end"] is None
    broken = scan(make_payload, jpeg[:1000], "image/jpeg")  # cut inside its scan data: no end, no child
    assert broken.children == [] and broken.data["end"] is None and broken.flags == []
    assert logical_end(b"not a known format", 10) is None
    assert not TrailerPlugin().accepts(make_payload(b"plain text", "text/plain"))


@pytest.mark.parametrize("name,mime", [("test.jpg", "image/jpeg"), ("test.exe", None)])
def test_a_scan_extracts_the_archive_behind_a_file(tmp_path: Path, name: str, mime: str | None) -> None:
    engine = Engine(load_settings(env={"STOQ_ARCHIVE": str(tmp_path / "archive")}, overrides={}))
    doc = engine.scan((CORPUS / name).read_bytes() + HIDDEN, name, {})
    validate(doc)
    by_name = {p["filename"]: p for p in doc["results"]}
    host_size = (CORPUS / name).stat().st_size
    trailer = by_name[f"{'overlay' if name.endswith('.exe') else 'trailer'}_{host_size:08x}.bin"]
    assert trailer["extracted_by"] == "trailer" and trailer["mime"] == "application/zip"
    assert by_name["hidden.txt"]["parent_id"] == trailer["payload_id"]
    assert by_name["hidden.txt"]["extracted_by"] == "decompress"
