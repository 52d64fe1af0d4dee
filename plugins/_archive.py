"""Bounded extraction from compressed streams and tar archives, and the byte budget shared with zip.

Every reader here is drained in chunks and the bytes it gives are counted against the caps: no size
declared by the input is trusted. Nothing is written to disk; member names are metadata only.
"""

from __future__ import annotations

import bz2
import gzip as gzip_module
import io
import lzma
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from stoq.model import iso

try:  # a declared dependency; without it zstd goes to the bsdcat tool (stoq_plugins._tools)
    import zstandard
except ImportError:  # pragma: no cover
    zstandard = None  # type: ignore[assignment]

#: Most bytes asked of a reader at once.
CHUNK = 1 << 20

#: Default of the decoder memory an xz or lzma stream may ask for (``xz -9`` needs 65 MiB).
LZMA_MEMORY = 128 << 20
#: Default address-space limit of an external extractor (``RLIMIT_AS``).
TOOL_MEMORY = 1 << 30
#: Defaults of the bomb rule: a member is abandoned once, past ``BOMB_AFTER`` decompressed bytes, it has
#: given more than ``BOMB_RATIO`` times the compressed bytes read for it (deflate tops out at 1032:1).
BOMB_RATIO = 1000.0
BOMB_AFTER = 8 << 20


class LzmaLimit(lzma.LZMAError):
    """An xz or LZMA stream needs more decoder memory (its dictionary) than ``Limits.lzma_memory``."""


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

    # Input per step: each stream boundary copies what is left of it (unused_data), and what liblzma
    # holds unread counts as consumed for the bomb rule.
    FEED = 1 << 14

    def _chunk(self) -> bytes:
        """The next input, ``FEED`` bytes at most: many tiny concatenated streams cost linear time."""
        chunk = bytes(self.data[self.pos:self.pos + self.FEED])
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


def open_stream(fmt: str, data: bytes, limits: Limits) -> tuple[Any, Callable[[], int]]:
    """A reader of one gzip, bzip2, xz, lzma or zlib stream (each concatenated stream is read, as the
    stdlib modules do), and a function giving how many compressed bytes it has used so far."""
    if fmt == "bzip2":  # (reads ahead 8 KiB: nothing next to bzip2's own ratios)
        raw = io.BytesIO(data)
        return bz2.BZ2File(raw), raw.tell
    reader: LzmaReader | ZlibReader | ZstdReader
    if fmt == "zstd":
        reader = ZstdReader(data, limits.lzma_memory)
    elif fmt in ("zlib", "gzip"):
        reader = ZlibReader(data, gzip=fmt == "gzip")
    else:
        reader = LzmaReader(data, lzma.FORMAT_XZ if fmt == "xz" else lzma.FORMAT_ALONE, limits.lzma_memory)
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


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps of one extraction (the ``decompress`` options)."""

    max_member_bytes: int
    max_total_bytes: int
    max_members: int
    ratio_flag: float
    passwords: tuple[bytes, ...] = ()
    lzma_memory: int = LZMA_MEMORY  # most decoder memory an xz or LZMA stream may ask for
    tool_memory: int = TOOL_MEMORY  # RLIMIT_AS of an external tool
    bomb_ratio: float = BOMB_RATIO  # 0: no bomb rule
    bomb_after: int = BOMB_AFTER

    def bomb(self, produced: int, consumed: int | None) -> bool:
        """True if ``produced`` decompressed bytes from ``consumed`` compressed ones is a ratio no real
        file has (the bomb rule; never below ``bomb_after`` bytes, never when ``consumed`` is unknown)."""
        return (consumed is not None and self.bomb_ratio > 0 and produced > self.bomb_after
                and produced > self.bomb_ratio * max(consumed, 1))


@dataclass(slots=True)
class Member:
    """One extracted member: its bytes and what the container says of it."""

    name: str | None
    content: bytes
    compressed_size: int | None
    modified: str | None = None
    encrypted: bool = False
    crc: int | None = None


@dataclass(slots=True)
class Unpacker:
    """Collects the members and flags of one container while keeping its byte budget."""

    limits: Limits
    members: list[Member] = field(default_factory=list)
    flags: dict[str, None] = field(default_factory=dict)  # an ordered set
    listed: int = 0  # regular-file members seen in the container
    total: int = 0  # bytes decompressed so far, kept or not
    stopped: bool = False  # the total cap was reached: extract nothing more
    unread: int = 0  # bytes an external tool wrote that were never read (dropped at a cap)

    @property
    def extracted(self) -> int:
        """Every byte decompressed, kept or not: what the scan's byte budget is charged."""
        return self.total + self.unread

    def flag(self, name: str) -> None:
        self.flags[name] = None

    def admit(self) -> bool:
        """Counts one more member; False (with a flag) past ``max_members`` or the total cap."""
        if self.stopped:
            return False
        if self.listed >= self.limits.max_members:
            self.flag("limit:members")
            return False
        self.listed += 1
        return True

    def drain(self, read: Callable[[int], bytes], sink: bytearray, compressed_size: int | None,
              consumed: Callable[[], int] | None = None) -> bool:
        """Appends ``read(CHUNK)`` to ``sink`` until it gives nothing. False, with a flag, at a cap or
        when the member is a bomb: ``consumed()`` says how many compressed bytes the reader has used so
        far (without it, the whole ``compressed_size`` is the measure, which only a finished member reaches).

        On an exception from ``read``, ``sink`` keeps what was read before it.
        """
        limits = self.limits
        try:
            # near the total cap, no more than it allows (+1, to see it passed): the scan's budget may be small
            while chunk := read(min(CHUNK, limits.max_total_bytes - self.total + 1)):
                sink += chunk
                self.total += len(chunk)
                if self.total > limits.max_total_bytes:  # first: it stops the whole payload
                    self.flag("limit:total-bytes")
                    self.stopped = True
                    return False
                if len(sink) > limits.max_member_bytes:
                    self.flag("limit:member-bytes")
                    return False
                if limits.bomb(len(sink), consumed() if consumed is not None else compressed_size):
                    self.flag("ratio:bomb")
                    return False
            return True
        finally:
            if compressed_size is not None and len(sink) > limits.ratio_flag * max(compressed_size, 1):
                self.flag("ratio:high")


def timestamp(seconds: float | None) -> str | None:
    """ISO-8601 UTC of a Unix time, or None when absent or out of range."""
    if not seconds:
        return None
    try:
        return iso(datetime.fromtimestamp(seconds, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None


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
        reader, consumed = open_stream(fmt, data, unpacker.limits)
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


def unpack_tar(data: bytes, unpacker: Unpacker) -> None:
    """Regular files of a tar archive, and hard links to one read before it (a member of its own with the
    same bytes: bsdtar writes a xar's, cpio's or rpm's second name for one file that way). Symbolic
    links, devices and directories are skipped."""
    read: dict[str, bytes] = {}  # name -> bytes of the regular members kept, for hard links
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:  # not a tar: ReadError
        while True:
            try:
                info = archive.next()
            except tarfile.ReadError:
                unpacker.flag("corrupt:truncated")
                return
            if info is None:  # tarfile also ends quietly at a damaged header past the first
                rest = data[archive.offset:archive.offset + 512]
                if rest and rest != bytes(512):
                    unpacker.flag("corrupt:truncated" if len(rest) < 512 else "corrupt:data")
                return
            target = read.get(info.linkname) if info.islnk() else None
            if not info.isreg() and target is None:
                continue
            if not unpacker.admit():
                return
            sink = bytearray()
            reader = io.BytesIO(target) if target is not None else archive.extractfile(info)
            assert reader is not None  # a regular file always has one
            try:
                complete = unpacker.drain(reader.read, sink, None)  # (a link's copy counts against the caps too)
            except tarfile.ReadError:
                unpacker.flag("corrupt:truncated")
                return
            if complete:
                content = read[info.name] = bytes(sink)
                unpacker.members.append(Member(info.name, content, len(content) if target is not None else info.size,
                                               timestamp(info.mtime)))


_AR_HEADER = 60
_AR_SYMBOLS = ("/", "/SYM64/", "__.SYMDEF", "__.SYMDEF SORTED")


def unpack_ar(data: bytes, unpacker: Unpacker) -> None:
    """Members of a Unix ar archive (deb packages, static libraries): GNU (a ``//`` table of long names,
    ``/n`` references to it), BSD (``#1/len``: the name first in the data) and System V names; symbol
    tables are skipped. Read here rather than by bsdtar, which drops every member of an archive whose
    mode fields have no file type (GNU ar's deterministic mode, Debian's default). Stored, not
    compressed: each member is read from the input. Raises ValueError if it is not an ar archive."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (thin archives hold no members)")
    view, pos, names = memoryview(data), 8, b""
    while pos < len(data):
        if data[pos:pos + 1] == b"\n":  # (padding to an even offset)
            pos += 1
            continue
        header = data[pos:pos + _AR_HEADER]
        if len(header) < _AR_HEADER:
            unpacker.flag("corrupt:truncated")
            return
        try:
            size = int(header[48:58].decode("ascii").strip() or "0")
            if header[58:60] != b"`\n" or size < 0:
                raise ValueError
        except ValueError:
            unpacker.flag("corrupt:data")
            return
        start, raw = pos + _AR_HEADER, header[:16].rstrip(b" ")
        pos = start + size
        if pos > len(data):
            unpacker.flag("corrupt:truncated")
            return
        if raw == b"//":
            names = data[start:pos]
            continue
        if raw.startswith(b"#1/") and raw[3:].isdigit():  # BSD: the name precedes the data
            length = min(int(raw[3:]), size)
            raw, start = data[start:start + length].rstrip(b"\0"), start + length
        elif raw.startswith(b"/") and raw[1:].isdigit():  # GNU: an offset into the // table
            at = int(raw[1:])
            end = names.find(b"\n", at)
            raw = names[at:end if end >= 0 else len(names)].rstrip(b"/")
        elif raw not in (b"/", b"/SYM64/"):
            raw = raw[:-1] if raw.endswith(b"/") else raw
        name = raw.decode("utf-8", "replace")
        if name in _AR_SYMBOLS or raw in (b"/", b"/SYM64/"):
            continue
        if not unpacker.admit():
            return
        sink = bytearray()
        stream = io.BytesIO(view[start:pos])
        if unpacker.drain(stream.read, sink, None):
            mtime = header[16:28].decode("ascii", "replace").strip()
            unpacker.members.append(Member(name, bytes(sink), pos - start,
                                           timestamp(int(mtime)) if mtime.isdigit() else None))
