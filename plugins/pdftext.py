"""The ``pdftext`` reader: the text of PDF documents, laid out by pdfminer.six, as one text/plain child."""

from __future__ import annotations

from functools import partial

from pydantic import Field

from stoq.plugin import Extracted, Payload, PluginOptions, ReaderPlugin, Result
from stoq_plugins._isolate import MemoryLimit, run_limited
from stoq_plugins._pdf import extract, preload

MiB = 1 << 20


class PdfTextPlugin(ReaderPlugin):
    """Reads the text of a PDF, page by page, into one UTF-8 text child.

    The text is what ``pdfminer.high_level.extract_text`` returns (default layout analysis), read a
    page at a time so the caps apply as it grows. The parse runs in a forked child process allowed
    ``max_memory`` bytes of address space more than the worker (``stoq_plugins._isolate``), and every
    stream it decompresses stops at ``max_stream_bytes`` (``stoq_plugins._pdf``). The child is named after
    the payload with ``.txt`` and is left out when the PDF holds no text (a scan). Output ``{"pages"
    (pages read), "characters" (in the child)}``. Flags: ``limit:pdf-pages`` when a page past
    ``max_pages`` exists, ``limit:pdf-chars`` when the text was cut at ``max_chars``,
    ``limit:pdf-stream-bytes`` when a page needed a stream inflating past ``max_stream_bytes`` (that page's
    text is left out, the next pages are read), ``limit:pdf-memory`` when the parse ran out of
    ``max_memory`` (no child). A payload pdfminer cannot parse, or an encrypted one whose password is not
    ``password``, raises.
    """

    name = "pdftext"
    version = "1.1"
    mimes = frozenset({"application/pdf", "application/x-pdf"})

    class Options(PluginOptions):
        max_pages: int = Field(500, ge=0, description="Most pages read from one PDF.")
        max_chars: int = Field(10_000_000, ge=0, description="Most characters of text kept from one PDF.")
        password: str = Field("", description="Password tried on encrypted PDFs (empty: the user password '').")
        max_stream_bytes: int = Field(64 * MiB, ge=0, description="Most bytes one decompressed stream may "
                                                                  "inflate to (limit:pdf-stream-bytes beyond).")
        max_memory: int = Field(1024 * MiB, ge=64 * MiB, description="Address space the parsing process may add "
                                                                     "to the worker's, in bytes (limit:pdf-memory).")
        max_cpu_seconds: int = Field(300, ge=1, description="CPU time of the parsing process, in seconds (a "
                                                            "backstop: the plugin's time limit kills it first).")

    def setup(self) -> None:
        preload()  # once per worker, not in each forked parse

    def accepts(self, payload: Payload) -> bool:
        return b"%PDF-" in payload.content[:1024] and super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> Result:
        parse = partial(extract, payload.content, options.password, options.max_pages, options.max_chars,
                        options.max_stream_bytes)
        try:
            found = run_limited(parse, options.max_memory, options.max_cpu_seconds)
        except MemoryLimit:
            return Result(data={"pages": 0, "characters": 0}, flags=["limit:pdf-memory"])
        text, flags = found["text"], found["flags"]
        if len(text) > options.max_chars:
            flags.append("limit:pdf-chars")
            text = text[:options.max_chars]
        children = []
        if text.strip():
            stem = (payload.filename or "pdf").rsplit("/", 1)[-1]
            children.append(Extracted(text.encode("utf-8", "replace"), filename=f"{stem}.txt",
                                      meta={"encoding": "utf-8", "characters": len(text)}))
        return Result(data={"pages": found["pages"], "characters": len(text)}, children=children, flags=flags)
