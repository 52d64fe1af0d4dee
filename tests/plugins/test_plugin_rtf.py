"""The ``rtf`` carver on RTF documents built here: raw objects, an OLE1 object holding a corpus document,
an OLE Package holding a file (cross-checked with oletools' own parsers), caps and hostile input."""

from __future__ import annotations

import hashlib
import struct
import time

import pytest
from oletools import oleobj
from oletools.rtfobj import RtfObjParser

from stoq.plugin import Payload, Result
from stoq_plugins.rtf import RtfPlugin


def scan(content: bytes, **options) -> Result:
    plugin = RtfPlugin(RtfPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "text/rtf", hashlib.sha256(content).hexdigest(), 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def rtf(*objects: bytes) -> bytes:
    """An RTF document embedding each of ``objects`` as ``\\objdata`` hex, in lines of 64 digits."""
    body = b""
    for data in objects:
        hexed = data.hex().encode()
        lines = b"\r\n".join(hexed[i:i + 64] for i in range(0, len(hexed), 64))
        body += b"{\\object\\objemb{\\*\\objclass Package}\\objw100\\objh100{\\*\\objdata\r\n" + lines + b"}}"
    return b"{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Arial;}}\\pard Hello " + body + b"\\par}"


def ole1(class_name: bytes, native: bytes) -> bytes:
    """An embedded OLE1 object (MS-OLEDS 2.2.4): version, format 2, class/topic/item names, native data."""
    name = class_name + b"\x00"
    return (struct.pack("<III", 0x0501, 2, len(name)) + name + struct.pack("<II", 0, 0)
            + struct.pack("<I", len(native)) + native)


def package(label: bytes, path: bytes, content: bytes) -> bytes:
    """Packager native data: type, label, path, reserved, temp path, data."""
    temp = b"C:\\Temp\\" + label + b"\x00"
    return (struct.pack("<H", 2) + label + b"\x00" + path + b"\x00" + struct.pack("<II", 0x00030000, len(temp))
            + temp + struct.pack("<I", len(content)) + content)


def test_arbitrary_bytes_are_carved_as_embedded() -> None:
    data = bytes(range(256)) * 3
    document = rtf(data)
    result = scan(document)
    [child] = result.children
    assert child.content == data and child.meta["class_name"] is None
    [reference] = [o for o in _parsed(document)]
    assert reference.rawdata == data and child.meta["offset"] == reference.start


def _parsed(document: bytes) -> list:
    parser = RtfObjParser(document)
    parser.parse()
    return parser.objects


def test_ole1_object_holding_a_document(corpus) -> None:
    doc = (corpus / "test.doc").read_bytes()
    result = scan(rtf(ole1(b"Word.Document.8", doc)))
    [child] = result.children
    assert child.content == doc
    assert child.meta["class_name"] == "Word.Document.8" and child.meta["size"] == len(doc)
    assert result.data == {"objects": 1, "packages": 0} and result.flags == []


def test_package_yields_the_packaged_file() -> None:
    payload = b"MZ" + b"\x90" * 1000 + b"packaged"
    native = package(b"evil.exe", b"C:\\Users\\x\\evil.exe", payload)
    document = rtf(ole1(b"Package", native), b"plain bytes here" * 4)
    [reference, _] = _parsed(document)  # oletools agrees on what was packaged
    assert reference.is_package and reference.olepkgdata == payload and reference.filename == "evil.exe"
    result = scan(document)
    assert result.data == {"objects": 2, "packages": 1}
    by_name = {c.filename: c for c in result.children}
    assert by_name["evil.exe"].content == payload
    assert by_name["evil.exe"].meta["package"]["path"] == "C:\\Users\\x\\evil.exe"
    assert by_name["evil.exe"].meta["package"]["size"] == len(payload)
    assert by_name["rtf_object_0.bin"].content == native
    assert by_name["rtf_object_1.bin"].content == b"plain bytes here" * 4
    assert oleobj.OleNativeStream(native, package=True).data == payload


def test_truncated_package_is_flagged() -> None:
    native = package(b"a.txt", b"C:\\a.txt", b"x" * 100)[:-50]
    result = scan(rtf(ole1(b"Package", native)))
    assert "corrupt:package" in result.flags
    assert result.children[-1].content == b"x" * 50
    result = scan(rtf(ole1(b"Package", b"\x02\x00no terminator")))
    assert "corrupt:package" in result.flags and len(result.children) == 1


def test_caps_are_flagged() -> None:
    result = scan(rtf(b"a" * 40, b"b" * 40, b"c" * 40), max_objects=2)
    assert [c.content for c in result.children] == [b"a" * 40, b"b" * 40]
    assert result.flags == ["limit:rtf-objects"]
    result = scan(rtf(b"a" * 40, b"b" * 400), max_object_bytes=100)
    assert [c.content for c in result.children] == [b"a" * 40] and result.flags == ["limit:rtf-object-size"]


@pytest.mark.parametrize("document", [
    b"{\\rtf1" + b"{" * 20000,
    b"{\\rtf1{\\object{\\*\\objdata " + b"0" * 100001,
    b"{\\rtf1{\\object{\\*\\objdata " + b"4d5a\\'41" * 2000 + b"}}}",
    b"{\\rtf1" + b"}" * 20000 + b"\\bin99999999 ab",
])
def test_hostile_documents_end_quickly(document: bytes) -> None:
    started = time.monotonic()
    result = scan(document)
    assert len(result.children) <= 1
    assert time.monotonic() - started < 5


def test_non_rtf_is_declined(make_payload) -> None:
    assert not RtfPlugin().accepts(make_payload(b"%PDF-1.4"))


def test_bin_as_the_last_token_is_no_data() -> None:
    """Found by fuzzing (tests/fuzz/fuzz_rtf.py): oletools' tokenizer raises TypeError on a ``\\bin``
    that ends the file. The object before it is still carved; the ``\\bin`` adds no data."""
    content = b"{\\rtf1{\\object{\\*\\objdata 4142\\bin"
    with pytest.raises(TypeError):  # oletools' own answer
        RtfObjParser(content).parse()
    result = scan(content)
    assert result.data == {"objects": 1, "packages": 0}
    (child,) = result.children
    reference = RtfObjParser(content[:-len(b"\\bin")])  # oletools on the file without that last token
    reference.parse()
    assert child.content == b"AB" and child.meta["offset"] == reference.objects[0].start
