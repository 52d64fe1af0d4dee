"""The ``pdftext`` reader on the corpus PDF (compared with pdfminer's extract_text called here) and on
multi-page PDFs written here, for the page and character caps; garbage raises; a content stream that
inflates to 512 MiB is stopped by the stream cap, or by the parsing process's address-space limit."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zlib

import pytest
from pdfminer.high_level import extract_text

from stoq.plugin import Payload, Result
from stoq_plugins._isolate import ParseError
from stoq_plugins.pdftext import PdfTextPlugin

MiB = 1 << 20


def scan(content: bytes, filename: str | None = None, **options) -> Result:
    plugin = PdfTextPlugin(PdfTextPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", filename, "application/pdf", hashlib.sha256(content).hexdigest(), 0)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def pdf(pages: list[str], extra: bytes | None = None) -> bytes:
    """A minimal PDF with one line of Helvetica text per page, with a correct xref table; ``extra``, a
    FlateDecode stream, is the first page's second content stream."""
    count = len(pages)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(count))
               + b"] /Count %d >>" % count,
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"
        contents = b"[%d 0 R %d 0 R]" % (5 + 2 * i, 4 + 2 * count) if extra is not None and i == 0 else \
            b"%d 0 R" % (5 + 2 * i)
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
                       b" /Resources << /Font << /F1 3 0 R >> >> /Contents " + contents + b" >>")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    if extra is not None:
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(extra) + extra + b"\nendstream")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def test_corpus_pdf_text_is_pdfminers(corpus) -> None:
    data = (corpus / "test.pdf").read_bytes()
    expected = extract_text(io.BytesIO(data))
    result = scan(data, filename="test.pdf")
    [child] = result.children
    assert child.content.decode("utf-8") == expected
    assert child.filename == "test.pdf.txt"
    assert "Lorem ipsum dolor sit amet, consectetur adipiscing elit." in expected
    assert result.data == {"pages": 1, "characters": len(expected)} and result.flags == []


def test_pages_and_characters_are_capped() -> None:
    data = pdf([f"This is page number {i}" for i in range(1, 6)])
    assert scan(data).children[0].content.decode() == extract_text(io.BytesIO(data))
    result = scan(data, max_pages=2)
    assert result.data["pages"] == 2 and result.flags == ["limit:pdf-pages"]
    assert result.children[0].content.decode() == extract_text(io.BytesIO(data), maxpages=2)
    assert "page number 3" not in result.children[0].content.decode()
    result = scan(data, max_chars=30)
    assert result.flags == ["limit:pdf-chars"] and result.data["characters"] == 30
    assert result.children[0].content.decode() == extract_text(io.BytesIO(data))[:30]
    assert result.data["pages"] < 5  # stopped reading once past the cap


def test_pdf_without_text_has_no_child() -> None:
    result = scan(pdf([""]))
    assert result.children == [] and result.data["pages"] == 1


def test_garbage_raises_and_non_pdf_is_declined(make_payload) -> None:
    with pytest.raises(ParseError, match="^PDFSyntaxError: "):
        scan(b"%PDF-1.4\n" + bytes(range(256)) * 8)
    assert not PdfTextPlugin().accepts(make_payload(b"PK\x03\x04"))


def zeros_deflated(size: int) -> bytes:
    """``size`` zero bytes, deflated a MiB at a time (the test never holds them)."""
    deflater = zlib.compressobj(9)
    chunk = bytes(MiB)
    return b"".join(deflater.compress(chunk) for _ in range(size // MiB)) + deflater.flush()


BOMB_SCAN = """
import hashlib, json, resource, sys
from stoq.plugin import Payload
from stoq_plugins.pdftext import PdfTextPlugin
content = sys.stdin.buffer.read()
plugin = PdfTextPlugin(PdfTextPlugin.Options(**json.loads(sys.argv[1])))
result = plugin.scan(Payload(content, "t", "bomb.pdf", "application/pdf", hashlib.sha256(content).hexdigest(), 0),
                     plugin.options)
print(json.dumps({"flags": result.flags, "data": result.data, "text": [c.content.decode() for c in result.children],
                  "parser_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def scan_in_a_process(content: bytes, **options) -> dict:
    """The plugin run in a fresh interpreter: its result, and the peak RSS of the process that parsed."""
    done = subprocess.run([sys.executable, "-c", BOMB_SCAN, json.dumps(options)], input=content,
                          capture_output=True, check=True, timeout=300)
    return json.loads(done.stdout)


def test_a_content_stream_inflating_to_512_mib_is_capped() -> None:
    bomb = pdf(["page one", "page two"], extra=zeros_deflated(512 * MiB))
    assert len(bomb) < 2 * MiB
    capped = scan_in_a_process(bomb)
    assert capped["flags"] == ["limit:pdf-stream-bytes"]
    assert capped["data"] == {"pages": 2, "characters": len("page two\n\n\x0c")}
    assert capped["text"] == ["page two\n\n\x0c"]  # the bomb's page is left out, the next one read
    assert capped["parser_rss_kib"] < 400 * 1024  # a 64 MiB stream at most (unbounded: 3+ GB)
    # no stream cap: the parsing process's address-space limit stops it
    starved = scan_in_a_process(bomb, max_stream_bytes=1 << 40, max_memory=256 * MiB)
    assert starved["flags"] == ["limit:pdf-memory"] and starved["text"] == []
    assert starved["parser_rss_kib"] < 512 * 1024


def test_a_damaged_page_keeps_the_pages_before_it() -> None:
    """Found by fuzzing (tests/fuzz/fuzz_pdf.py): a ``/MediaBox`` holding a keyword makes pdfminer
    raise TypeError while it walks the page tree. The text of the pages before it is kept, flagged."""
    good = pdf(["one", "two", "three"])
    at = good.index(b"/MediaBox [0 0 612 792]", good.index(b"/MediaBox") + 1)  # the second page's
    damaged = good[:at] + b"/MediaBox [0 0 612 foo]" + good[at + 23:]  # same length: the xref holds
    with pytest.raises(TypeError):  # pdfminer's own answer
        extract_text(io.BytesIO(damaged))
    result = scan(damaged)
    assert result.flags == ["corrupt:pdf"]
    assert result.data["pages"] == 1
    (child,) = result.children
    assert child.content.decode() == extract_text(io.BytesIO(good), page_numbers=[0])
