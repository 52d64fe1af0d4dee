"""The text of a PDF by pdfminer.six, page by page, with every decompressed stream capped: the logic behind
the ``pdftext`` reader (which runs it in a child process under an address-space limit, ``_isolate``).

pdfminer inflates a FlateDecode stream whole (``zlib.decompress``), and retries a damaged one a byte at a
time with no bound. Both are replaced, for the parse, by a decompressor that stops past ``max_stream_bytes``
and raises ``StreamLimit``: the page that needed that stream is abandoned (flag ``limit:pdf-stream-bytes``)
and the next pages are read.

pdfminer lets Python's own exceptions out of a damaged page tree or page (a ``/MediaBox`` holding a
keyword raises ``TypeError``, found by tests/fuzz/fuzz_pdf.py): those end the reading at that page, the
text of the pages before it is kept, and the flag ``corrupt:pdf`` says so.
"""

from __future__ import annotations

import io
import zlib
from typing import Any


#: What pdfminer raises, beyond its own errors, on a damaged structure it does not check.
DAMAGE = (TypeError, KeyError, IndexError, AttributeError, AssertionError)


class StreamLimit(Exception):
    """A stream inflated past ``max_stream_bytes``."""


class BoundedZlib:
    """What pdfminer's ``pdftypes`` module uses of ``zlib``, with ``decompress`` capped."""

    error = zlib.error

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def decompressobj(self, *args: Any) -> Any:
        return zlib.decompressobj(*args)

    def decompress(self, data: bytes) -> bytes:
        inflater = zlib.decompressobj()
        out = inflater.decompress(data, self.cap + 1)
        if len(out) > self.cap:
            raise StreamLimit(f"a stream inflates past {self.cap} bytes")
        if not inflater.eof:
            raise zlib.error("incomplete or truncated stream")  # as zlib.decompress says; pdfminer recovers
        return out


def bounded_corrupted(cap: int) -> Any:
    """pdfminer's recovery of a stream with a bad checksum (everything before the error), capped."""
    def decompress_corrupted(data: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, cap + 1)
        except zlib.error:
            return b""
        if len(out) > cap:
            raise StreamLimit(f"a stream inflates past {cap} bytes")
        return out
    return decompress_corrupted


def preload() -> None:
    """Imports the pdfminer modules ``extract`` uses, in the calling process: a parse forked from it
    then starts with them loaded instead of importing them again for every PDF."""
    import pdfminer.converter  # noqa: F401
    import pdfminer.layout  # noqa: F401
    import pdfminer.pdfinterp  # noqa: F401
    import pdfminer.pdfpage  # noqa: F401
    import pdfminer.pdftypes  # noqa: F401


def extract(content: bytes, password: str, max_pages: int, max_chars: int, max_stream_bytes: int) -> dict[str, Any]:
    """``{"text", "pages" (read), "flags"}`` of a PDF; the text may run past ``max_chars`` (cut by the caller)."""
    from pdfminer import pdftypes
    from pdfminer.converter import TextConverter
    from pdfminer.layout import LAParams
    from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
    from pdfminer.pdfpage import PDFPage

    pdftypes.zlib = BoundedZlib(max_stream_bytes)  # type: ignore[assignment]  # (in this child process only)
    pdftypes.decompress_corrupted = bounded_corrupted(max_stream_bytes)
    flags: list[str] = []
    pages = 0
    with io.StringIO() as output:
        resources = PDFResourceManager(caching=True)
        device = TextConverter(resources, output, codec="utf-8", laparams=LAParams())
        interpreter = PDFPageInterpreter(resources, device)
        walk = PDFPage.get_pages(io.BytesIO(content), password=password, caching=True)
        while True:
            try:
                page = next(walk, None)
            except DAMAGE:
                flags.append("corrupt:pdf")
                break
            if page is None:
                break
            if pages >= max_pages:
                flags.append("limit:pdf-pages")
                break
            pages += 1
            try:
                interpreter.process_page(page)
            except StreamLimit:
                if "limit:pdf-stream-bytes" not in flags:
                    flags.append("limit:pdf-stream-bytes")
            except DAMAGE:
                flags.append("corrupt:pdf")
                break
            if output.tell() > max_chars:
                break
        return {"text": output.getvalue(), "pages": pages, "flags": flags}
