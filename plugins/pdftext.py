"""The ``pdftext`` reader: the text of PDF documents, laid out by pdfminer.six, as one text/plain child."""

from __future__ import annotations

import io

from pydantic import Field

from stoq.plugin import Extracted, Payload, PluginOptions, ReaderPlugin, Result


class PdfTextPlugin(ReaderPlugin):
    """Reads the text of a PDF, page by page, into one UTF-8 text child.

    The text is what ``pdfminer.high_level.extract_text`` returns (default layout analysis), read a
    page at a time so the caps apply as it grows. The child is named after the payload with ``.txt``
    and is left out when the PDF holds no text (a scan). Output ``{"pages" (pages read),
    "characters" (in the child)}``. Flags: ``limit:pdf-pages`` when a page past ``max_pages`` exists,
    ``limit:pdf-chars`` when the text was cut at ``max_chars``. A payload pdfminer cannot parse, or
    an encrypted one whose password is not ``password``, raises.
    """

    name = "pdftext"
    version = "1.0"
    mimes = frozenset({"application/pdf", "application/x-pdf"})

    class Options(PluginOptions):
        max_pages: int = Field(500, ge=0, description="Most pages read from one PDF.")
        max_chars: int = Field(10_000_000, ge=0, description="Most characters of text kept from one PDF.")
        password: str = Field("", description="Password tried on encrypted PDFs (empty: the user password '').")

    def accepts(self, payload: Payload) -> bool:
        return b"%PDF-" in payload.content[:1024] and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        flags: list[str] = []
        pages = 0
        with io.StringIO() as output:
            from pdfminer.converter import TextConverter  # imported on first use: ~0.1 s of start-up
            from pdfminer.layout import LAParams
            from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
            from pdfminer.pdfpage import PDFPage

            resources = PDFResourceManager(caching=True)
            device = TextConverter(resources, output, codec="utf-8", laparams=LAParams())
            interpreter = PDFPageInterpreter(resources, device)
            for page in PDFPage.get_pages(io.BytesIO(payload.content), password=options.password, caching=True):
                if pages >= options.max_pages:
                    flags.append("limit:pdf-pages")
                    break
                interpreter.process_page(page)
                pages += 1
                if output.tell() > options.max_chars:
                    break
            text = output.getvalue()
        if len(text) > options.max_chars:
            flags.append("limit:pdf-chars")
            text = text[:options.max_chars]
        children = []
        if text.strip():
            stem = (payload.filename or "pdf").rsplit("/", 1)[-1]
            children.append(Extracted(text.encode("utf-8", "replace"), filename=f"{stem}.txt",
                                      meta={"encoding": "utf-8", "characters": len(text)}))
        return Result(data={"pages": pages, "characters": len(text)}, children=children, flags=flags)
