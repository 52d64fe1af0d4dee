"""The ``trailer`` carver: data appended after the logical end of a JPEG, PNG, GIF, PDF, zip or PE."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import CarverPlugin, Extracted, Payload, PluginOptions, Result
from stoq_plugins._debloat import junk_start
from stoq_plugins._trailer import format_of, logical_end

MiB = 1 << 20
#: MIME types of the formats whose end is known (``stoq_plugins._trailer``).
MIMES = frozenset({"image/jpeg", "image/png", "image/gif", "application/pdf", "application/x-pdf",
                   "application/zip", "application/x-zip-compressed", "application/x-dosexec",
                   "application/vnd.microsoft.portable-executable"})


class TrailerPlugin(CarverPlugin):
    """Carves the bytes appended after the end of a file's own data (an archive hidden behind an image, a
    PE's overlay) as one child.

    The end is found by parsing each format's structure (``stoq_plugins._trailer``): JPEG to its EOI
    segment by segment, PNG to IEND, GIF to its trailer byte, zip to the end of the central directory
    record and its comment, PE to its furthest section or certificate table (the overlay), PDF to its last
    ``%%EOF`` and end of line. The child is named ``trailer_<offset>.bin`` (``overlay_<offset>.bin`` for a
    PE) with meta offset, size (without padding) and format (the host's). Padding that ends the trailer
    (one byte or a short pattern repeated, or MiBs zlib shrinks ``junk_ratio`` times:
    ``stoq_plugins._debloat.junk_start``) is left out of the child; a trailer shorter than ``min_size``
    without it is not a child. Output ``{"format", "end" (offset, or None when unknown), "trailer" (bytes
    after it), "carved", "padding" (bytes of padding at the end)}``. Flags: ``limit:trailer-steps`` when the
    walk took ``max_steps`` steps without reaching the end, ``limit:trailer-size`` when the child was cut at
    ``max_size``.
    """

    name = "trailer"
    version = "1.0"
    mimes = MIMES

    class Options(PluginOptions):
        min_size: int = Field(16, ge=1, description="Shortest trailer carved, in bytes (shorter ones are "
                                                    "only reported).")
        max_size: int = Field(256 * MiB, ge=1, description="Largest trailer carved, in bytes (cut beyond).")
        max_steps: int = Field(100_000, ge=1, description="Most segments, chunks, blocks or records walked to "
                                                          "find the end.")
        junk_ratio: float = Field(20, gt=1, description="Padding ending the trailer is left out: a repeated "
                                                        "pattern, or MiBs zlib shrinks this many times.")

    def accepts(self, payload: Payload) -> bool:
        return super().accepts(payload) and format_of(payload.content) is not None

    def scan(self, payload: Payload, options: Options) -> Result:
        data = payload.content
        end = logical_end(data, options.max_steps)
        if end is None:
            raise ValueError(f"not a format whose end is known (MIME type {payload.mime})")
        flags = ["limit:trailer-steps"] if end.capped else []
        start = len(data) if end.offset is None else end.offset
        stop = junk_start(data, start, len(data), options.junk_ratio, options.max_size)[0]  # padding left out
        size = stop - start
        children = []
        if size >= options.min_size:
            if size > options.max_size:
                flags.append("limit:trailer-size")
            kind = "overlay" if end.format == "pe" else "trailer"
            children.append(Extracted(data[start:start + min(size, options.max_size)],
                                      filename=f"{kind}_{start:08x}.bin",
                                      meta={"offset": start, "size": size, "format": end.format}))
        return Result(data={"format": end.format, "end": end.offset, "trailer": len(data) - start, "carved": len(children),
                            "padding": len(data) - stop}, children=children, flags=flags)
