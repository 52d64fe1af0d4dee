"""The ``ole`` carver on corpus documents: streams as olefile lists them, the packaged PE of
test_pe_object.doc (its Ole10Native header parsed here with struct), VBA of test.xls, hostile input."""

from __future__ import annotations

import hashlib
import io
import struct
import sys
import time

import olefile
import pytest
from oletools.olevba import VBA_Parser

from stoq.plugin import Payload, Result
from stoq_plugins.ole import OlePlugin


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan(content: bytes, **options) -> Result:
    plugin = OlePlugin(OlePlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "application/msword", sha(content), 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


@pytest.mark.parametrize("name", ["test.doc", "test.xls", "test.msi", "test_pe_object.doc"])
def test_streams_are_those_olefile_lists(corpus, name: str) -> None:
    data = (corpus / name).read_bytes()
    ole = olefile.OleFileIO(io.BytesIO(data))
    expected = {"/".join(e): (ole.get_size(e), ole.openstream(e).read()) for e in ole.listdir()}
    result = scan(data)
    got = {c.filename: (c.meta["size"], c.content) for c in result.children if c.meta.get("stream") == c.filename}
    assert got == expected
    assert result.data["streams"] == result.data["extracted"] == len(expected)
    assert result.flags == []


def test_packaged_file_of_ole10native(corpus) -> None:
    data = (corpus / "test_pe_object.doc").read_bytes()
    ole = olefile.OleFileIO(io.BytesIO(data))
    [path] = [e for e in ole.listdir() if e[-1] == "\x01Ole10Native"]
    stream = ole.openstream(path).read()
    # header: u32 total, u16 type, label\0, path\0, u32 reserved, u32 n + temp path, u32 size + data
    label, source, rest = stream[6:].split(b"\x00", 2)
    (temp_len,) = struct.unpack("<I", rest[4:8])
    (size,) = struct.unpack("<I", rest[8 + temp_len:12 + temp_len])
    embedded = rest[12 + temp_len:12 + temp_len + size]
    assert embedded[:2] == b"MZ" and len(embedded) == size
    [child] = [c for c in scan(data).children if c.meta.get("stream") != c.filename]
    assert child.filename == label.decode() == "test.exe"
    assert sha(child.content) == sha(embedded)
    assert child.meta["ole10native"]["path"] == source.decode("latin-1")
    assert child.meta["ole10native"]["size"] == size


def test_vba_modules_and_keywords_are_olevbas(corpus) -> None:
    data = (corpus / "test.xls").read_bytes()
    parser = VBA_Parser("x", data=data)
    expected = {module: code.encode() for _, _, module, code in parser.extract_macros()}
    keywords = {(t, k) for t, k, _ in parser.analyze_macros()}
    result = scan(data)
    got = {c.meta["vba_module"]: c.content for c in result.children if "vba_module" in c.meta}
    assert got == expected and "Module1.bas" in got
    assert {m["module"] for m in result.data["macros"]} == set(expected)
    assert {(k["type"], k["keyword"]) for k in result.data["vba_keywords"]} == keywords
    assert ("AutoExec", "Auto_Open") in keywords
    assert scan(data, vba=False).data["macros"] == []
    assert "pcodedmp" not in sys.modules  # oletools' GPL P-code disassembler stays unimported


def test_caps_are_flagged(corpus) -> None:
    data = (corpus / "test.doc").read_bytes()
    result = scan(data, max_streams=2, vba=False)
    assert len(result.children) == 2 and "limit:ole-streams" in result.flags
    result = scan(data, max_stream_bytes=1000, vba=False)
    assert "limit:ole-stream-size" in result.flags
    assert all(c.meta["size"] <= 1000 for c in result.children)
    result = scan((corpus / "test.xls").read_bytes(), max_vba_modules=1)
    assert len(result.data["macros"]) == 1 and "limit:vba-modules" in result.flags


@pytest.mark.parametrize("cut", [600, 4096, 0.5, 0.9])
def test_truncated_compound_file_raises_or_is_flagged(corpus, cut) -> None:
    data = (corpus / "test_pe_object.doc").read_bytes()
    data = data[:cut if isinstance(cut, int) else int(len(data) * cut)]
    started = time.monotonic()
    try:
        result = scan(data)
    except OSError:  # olefile cannot open it
        pass
    else:
        assert "corrupt:ole" in result.flags and "corrupt:ole-stream" in result.flags
    assert time.monotonic() - started < 5


def test_bad_ole10native_header_is_flagged(corpus, monkeypatch) -> None:
    from stoq_plugins import _ole
    data = (corpus / "test_pe_object.doc").read_bytes()
    real = _ole.read_streams

    def cut_native(*args):
        ole = real(*args)
        for stream in ole.streams:
            if stream.path.endswith("Ole10Native"):
                stream.content = stream.content[:40]
        return ole

    monkeypatch.setattr("stoq_plugins.ole.read_streams", cut_native)
    result = scan(data, vba=False)
    assert "corrupt:ole10native" in result.flags


def test_non_ole_is_declined_and_garbage_raises(make_payload) -> None:
    plugin = OlePlugin()
    assert not plugin.accepts(make_payload(b"PK\x03\x04 not ole"))
    with pytest.raises(OSError):
        plugin.scan(make_payload(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100), plugin.options)
