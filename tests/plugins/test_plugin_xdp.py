"""The ``xdp`` carver on XML Data Packages built here around the corpus PDF."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest

from stoq.plugin import Payload, Result
from stoq_plugins.xdp import XdpPlugin

HEAD = (b'<?xml version="1.0" encoding="UTF-8"?>\n<?xfa generator="AdobeLiveCycleDesigner_V8.0" APIVersion="2.5"?>\n'
        b'<xdp:xdp xmlns:xdp="http://ns.adobe.com/xdp/" timeStamp="2026-11-27T19:00:00Z">\n')
TAIL = b"\n</xdp:xdp>\n"


def xdp(chunks: list[bytes], head: bytes = HEAD, tag: bytes = b"chunk") -> bytes:
    """An XDP whose pdf packet holds ``chunks`` as ``<chunk>`` elements."""
    body = b"".join(b"<%s>%s</%s>\n" % (tag, c, tag) for c in chunks)
    return (head + b'<pdf xmlns="http://ns.adobe.com/xdp/pdf/"><document>\n' + body
            + b"</document></pdf>\n<config xmlns=\"http://www.xfa.org/schema/xci/1.0/\"/>" + TAIL)


def split(text: bytes, size: int) -> list[bytes]:
    """``text`` in pieces of ``size``, each wrapped at 76 columns with CRLF and indented."""
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return [b"\r\n  ".join(p[i:i + 76] for i in range(0, len(p), 76)) + b"\n" for p in pieces]


def scan(content: bytes, **options) -> Result:
    plugin = XdpPlugin(XdpPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "text/xml", "0" * 64, 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


@pytest.fixture
def pdf(corpus: Path) -> bytes:
    return (corpus / "test.pdf").read_bytes()


def test_pdf_from_chunks(pdf: bytes) -> None:
    chunks = split(base64.b64encode(pdf), 1001)  # not a multiple of 4: quads span chunks
    assert len(chunks) > 3
    result = scan(xdp(chunks))
    [child] = result.children
    assert child.content == pdf and child.filename == "xdp.pdf"
    assert child.meta == {"chunks": len(chunks), "size": len(pdf)}
    assert result.flags == [] and result.data == {"chunks": len(chunks), "size": len(pdf)}


def test_chunks_encoded_one_by_one_prefixed_and_cdata(pdf: bytes) -> None:
    pieces = [pdf[i:i + 1000] for i in range(0, len(pdf), 1000)]
    chunks = [base64.b64encode(p) for p in pieces]
    chunks[1] = b"<![CDATA[" + chunks[1] + b"]]>"
    assert scan(xdp(chunks)).children[0].content == pdf
    prefixed = xdp([base64.b64encode(pdf)], tag=b"p:chunk").replace(b"<pdf ", b"<p:pdf xmlns:p=\"x\" ")
    assert scan(prefixed).children[0].content == pdf


def test_invalid_base64_gives_what_decodes_before_it(pdf: bytes) -> None:
    text = base64.b64encode(pdf)
    chunks = split(text[:4000], 1000) + [b"!!not base64!!"] + split(text[4000:], 1000)
    result = scan(xdp(chunks))
    [child] = result.children
    assert child.content == pdf[:3000] and result.flags == ["corrupt:xdp"]


def test_entity_bomb_is_not_expanded(pdf: bytes) -> None:
    entities = b'<!ENTITY lol0 "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10) for i in range(1, 10))
    head = (b'<?xml version="1.0"?>\n<!DOCTYPE xdp:xdp [' + entities + b'<!ENTITY ext SYSTEM "file:///etc/passwd">]>\n'
            b'<xdp:xdp xmlns:xdp="http://ns.adobe.com/xdp/"><field>&lol9;&ext;</field>\n')
    started = time.monotonic()
    result = scan(xdp([base64.b64encode(pdf)], head=head))
    assert result.children[0].content == pdf and result.flags == []
    with pytest.raises(ValueError, match="no base64"):
        scan(xdp([b"&lol9;"], head=head))
    result = scan(xdp([base64.b64encode(pdf[:300]), b"&lol9;&ext;"], head=head))
    assert result.children[0].content == pdf[:300] and result.flags == ["corrupt:xdp"]
    assert time.monotonic() - started < 1


def test_caps(pdf: bytes) -> None:
    chunks = split(base64.b64encode(pdf), 1000)
    result = scan(xdp(chunks), max_size=1000)
    assert result.children[0].content == pdf[:1000] and result.flags == ["limit:xdp-size"]
    result = scan(xdp(chunks), max_chunks=2)
    assert result.children[0].content == pdf[:1500] and result.flags == ["limit:xdp-chunks"]


def test_hostile_markup_costs_one_pass() -> None:
    for junk in (b"<chunk>" * 200_000, b"<chunk " * 200_000, b"<chunk>" + b" " * 1_000_000 + b"<x>",
                 b"<chunk><![CDATA[" + b"A" * 1_000_000):
        started = time.monotonic()
        result = scan(HEAD + junk + TAIL)
        assert result.children == [] and result.data == {"chunks": 0, "size": 0}
        assert time.monotonic() - started < 1
    result = scan(xdp([b"", b" \n "]))
    assert result.children == [] and result.flags == [] and result.data == {"chunks": 2, "size": 0}


def test_declines_other_xml(corpus: Path) -> None:
    plugin = XdpPlugin()
    content = (corpus / "test.xml").read_bytes()
    assert not plugin.accepts(Payload(content, "t", None, "text/xml", "0" * 64, 0))
