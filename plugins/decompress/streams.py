"""Bounded decompression of gzip, bzip2, xz, lzma, zlib and zstd streams, in process.

Each reader gives at most ``n`` bytes per ``read1`` and says how many compressed bytes it has used (for
the bomb rule); what it gives is counted against the caps of the ``Unpacker`` (``budget``).
"""

from __future__ import annotations

import bz2
import gzip as gzip_module
import io
import lzma
import zlib
from typing import Any, Callable

from stoq_plugins.decompress.budget import CHUNK, FEED, Caps, Member, Unpacker, timestamp

try:  # a declared dependency; without it zstd goes to the bsdcat tool (``tools``)
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None  # type: ignore[assignment]


class LzmaLimit(lzma.LZMAError):
    """An xz or LZMA stream needs more decoder memory (its dictionary) than ``Caps.lzma_memory``."""


def lzma_limit(exc: lzma.LZMAError) -> bool:
    """True if liblzma refused a stream for its memory limit."""
    return "memory usage limit" in str(exc).lower()


class LzmaReader:
    """xz (``FORMAT_XZ``) or lzma (``FORMAT_ALONE``) streams, at most ``n`` bytes per ``read1``, under
    liblzma's memory limit: a crafted header cannot make it allocate a dictionary of gigabytes.
    Concatenated streams are read in turn and trailing garbage is ignored, as ``lzma.LZMAFile`` does."""

    def __init__(self, data: bytes, fmt: int, memlimit: int) -> None:
        self.data, self.fmt, self.memlimit, self.pos = memoryview(data), fmt, memlimit, 0
        self.d = lzma.LZMADecompressor(fmt, memlimit=memlimit)

    def _chunk(self) -> bytes:
        """The next input, ``FEED`` bytes at most: each stream boundary copies what is left of it
        (``unused_data``), so many tiny concatenated streams cost linear time."""
        chunk = bytes(self.data[self.pos:self.pos + FEED])
        self.pos += len(chunk)
        return chunk

    @property
    def consumed(self) -> int:
        """Input given to liblzma so far (it may hold up to ``FEED`` bytes of it unread)."""
        return self.pos - len(self.d.unused_data)

    def _decompress(self, src: bytes, n: int) -> bytes:
        try:
            return self.d.decompress(src, n)
        except lzma.LZMAError as exc:
            if lzma_limit(exc):
                raise LzmaLimit(f"needs more than {self.memlimit} bytes of decoder memory") from exc
            raise

    def read1(self, n: int) -> bytes:
        while True:
            if self.d.eof:
                rest = self.d.unused_data or self._chunk()
                if not rest:
                    return b""
                self.d = lzma.LZMADecompressor(self.fmt, memlimit=self.memlimit)
                try:
                    out = self._decompress(rest, n)
                except LzmaLimit:
                    raise
                except lzma.LZMAError:  # not another stream: trailing garbage, ignored
                    return b""
            else:
                src = b""
                if self.d.needs_input:
                    src = self._chunk()
                    if not src:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                out = self._decompress(src, n)
            if out:
                return out


def open_stream(fmt: str, data: bytes, caps: Caps) -> tuple[Any, Callable[[], int]]:
    """A reader of one gzip, bzip2, xz, lzma or zlib stream (each concatenated stream is read, as the
    stdlib modules do), and a function giving how many compressed bytes it has used so far."""
    if fmt == "bzip2":  # (reads ahead 8 KiB: nothing next to bzip2's own ratios)
        raw = io.BytesIO(data)
        return bz2.BZ2File(raw), raw.tell
    reader: LzmaReader | ZlibReader | ZstdReader
    if fmt == "zstd":
        reader = ZstdReader(data, caps.lzma_memory)
    elif fmt in ("zlib", "gzip"):
        reader = ZlibReader(data, gzip=fmt == "gzip")
    else:
        reader = LzmaReader(data, lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE, caps.lzma_memory)
    return reader, lambda: reader.consumed


#: Errors a corrupt stream raises (gzip.BadGzipFile and bz2's are OSError).
STREAM_ERRORS: tuple[type[Exception], ...] = (OSError, zlib.error, lzma.LZMAError,
                                               *((zstandard.ZstdError,) if zstandard is not None else ()))
#: Formats read by ``unpack_stream`` (zstd only when the ``zstandard`` library is installed).
STREAM_FORMATS = frozenset({"gzip", "bzip2", "xz", "lzma", "zlib", *(("zstd",) if zstandard is not None else ())})
_SUFFIXES = {".gz": "", ".gzip": "", ".bz2": "", ".xz": "", ".lzma": "", ".lz": "", ".zst": "", ".zz": "",
             ".tgz": ".tar", ".tbz2": ".tar", ".tbz": ".tar", ".txz": ".tar", ".tlz": ".tar", ".tzst": ".tar"}


class ZlibReader:
    """A zlib stream (RFC 1950), or gzip members (RFC 1952: each concatenated member is read, zero
    padding between them skipped, other trailing bytes an error, as ``gzip.GzipFile`` does), at most
    ``n`` bytes per ``read1``; EOFError if the input ends too soon. Unlike ``GzipFile``, it can say how
    much input it has used (``consumed``), which the bomb rule needs."""

    def __init__(self, data: bytes, gzip: bool = False) -> None:
        self.gzip, self.data, self.pos = gzip, memoryview(data), 0
        if gzip and data[:2] != b"\x1f\x8b":
            raise gzip_module.BadGzipFile(f"Not a gzipped file ({data[:2]!r})")
        self.d = zlib.decompressobj(31 if gzip else 15)

    @property
    def consumed(self) -> int:
        return self.pos - len(self.d.unconsumed_tail)

    def _next_member(self) -> bool:
        """After a gzip member: True if another follows (a new inflater then reads it)."""
        rest = self.d.unused_data
        self.pos -= len(rest)
        while self.pos < len(self.data) and self.data[self.pos] == 0:
            self.pos += 1
        if self.pos >= len(self.data):
            return False
        if bytes(self.data[self.pos:self.pos + 2]) != b"\x1f\x8b":
            raise gzip_module.BadGzipFile("Not a gzipped file (trailing data)")
        self.d = zlib.decompressobj(31)
        return True

    def read1(self, n: int) -> bytes:
        while True:
            if self.d.eof:
                if not self.gzip or not self._next_member():
                    return b""
            src = self.d.unconsumed_tail or bytes(self.data[self.pos:self.pos + CHUNK])
            if not self.d.unconsumed_tail:
                self.pos += len(src)
            out = self.d.decompress(src, n)
            if out:
                return out
            if not src and not self.d.eof:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")


def _is_frame(head: bytes) -> bool:
    """A zstd frame or a skippable frame begins here (RFC 8878)."""
    return head == b"\x28\xb5\x2f\xfd" or (len(head) == 4 and int.from_bytes(head, "little") & ~0xF == 0x184D2A50)


class ZstdReader:
    """zstd frames (concatenated ones read in turn, as ``zstd -d`` does), in process with the
    ``zstandard`` library, at most ``n`` bytes per ``read1``. The window a frame asks for is capped at
    ``memlimit`` (its decoder memory: ``LzmaLimit`` past it); bytes after the last frame that do not
    begin another are an error (``zstandard.ZstdError``), a frame cut short is ``EOFError``. Input is
    fed ``FEED`` bytes at a time: the library's ``decompress`` has no output bound, and a block of one
    repeated byte takes 4 bytes for 128 KiB (32768:1), so one step gives 16 MiB at most."""

    FEED = 512

    def __init__(self, data: bytes, memlimit: int) -> None:
        self.data, self.pos, self.memlimit = memoryview(data), 0, memlimit
        self.d = self._frame()
        self.out, self.at = b"", 0  # output not yet handed out
        self.ended = False

    def _frame(self) -> Any:
        return zstandard.ZstdDecompressor(max_window_size=self.memlimit).decompressobj()

    @property
    def consumed(self) -> int:
        return self.pos if self.ended else self.pos - len(self.d.unused_data)

    def read1(self, n: int) -> bytes:
        while self.at >= len(self.out):
            if self.ended:
                return b""
            if self.d.eof:
                self.pos -= len(self.d.unused_data)
                if self.pos >= len(self.data):
                    self.ended = True
                    return b""
                if not _is_frame(bytes(self.data[self.pos:self.pos + 4])):
                    raise zstandard.ZstdError("data after the last frame is not a zstd frame")
                self.d = self._frame()
            src = bytes(self.data[self.pos:self.pos + self.FEED])
            if not src:
                raise EOFError("zstd frame ended before its end")
            self.pos += len(src)
            try:
                self.out, self.at = self.d.decompress(src), 0
            except zstandard.ZstdError as exc:
                if "too much memory" in str(exc).lower():
                    raise LzmaLimit(f"a zstd window larger than {self.memlimit} bytes") from exc
                raise
        chunk = self.out[self.at:self.at + n]
        self.at += len(chunk)
        return chunk


def gzip_header(data: bytes) -> tuple[str | None, int]:
    """The file name (FNAME, ISO-8859-1) and MTIME of a gzip header (RFC 1952)."""
    if len(data) < 10 or data[3] & 0x08 == 0:
        return None, int.from_bytes(data[4:8], "little")
    start = 12 + int.from_bytes(data[10:12], "little") if data[3] & 0x04 else 10
    end = data.find(b"\x00", start)
    return (data[start:end].decode("latin-1") if end > start else None), int.from_bytes(data[4:8], "little")


def stream_name(filename: str | None) -> str | None:
    """The name of a compressed stream's content from the container's name (``a.tgz`` -> ``a.tar``)."""
    if not filename or "." not in filename:
        return None
    stem, dot, suffix = filename.rpartition(".")
    replacement = _SUFFIXES.get(dot + suffix.lower())
    return None if replacement is None or not stem else stem + replacement


def unpack_stream(fmt: str, data: bytes, filename: str | None, unpacker: Unpacker) -> None:
    """One gzip, bzip2, xz, lzma or zlib stream -> one member. A truncated or corrupt stream gives what was
    decompressed before the damage, with a flag; it raises if nothing was."""
    name, mtime = gzip_header(data) if fmt == "gzip" else (None, 0)
    if not unpacker.admit():
        return
    sink = bytearray()
    try:
        # read1: one decompression step per call, so an error cannot discard output already produced
        reader, consumed = open_stream(fmt, data, unpacker.caps)
        complete = unpacker.drain(reader.read1, sink, len(data), consumed)
    except LzmaLimit:
        unpacker.flag("limit:lzma-memory")
        complete = bool(sink)  # a later concatenated stream: keep the ones before it
    except EOFError:
        if not sink:
            raise
        unpacker.flag("corrupt:truncated")
        complete = True
    except STREAM_ERRORS:
        if not sink:
            raise
        unpacker.flag("corrupt:data")
        complete = True
    if complete:
        content = bytes(sink)
        unpacker.members.append(Member(name or stream_name(filename), content, len(data), timestamp(mtime),
                                       crc=zlib.crc32(content) if fmt == "gzip" else None))
