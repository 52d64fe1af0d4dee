"""Bounded zip extraction: the central directory read by ``zipfile``, checked for overlapping entries
before anything is decompressed, and a local-header scan to recover members of a damaged archive.

``zipfile`` decompresses stored and deflated members (and decrypts ZipCrypto) with bounded reads;
bzip2 and LZMA members are decompressed here, because ``zipfile`` inflates those without an output
bound per call.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zipfile
import zlib
from datetime import datetime, timezone
from typing import Any, Callable

from stoq.model import iso
from stoq_plugins.decompress.budget import FEED, LZMA_MEMORY, Member, Unpacker, timestamp
from stoq_plugins.decompress.streams import STREAM_ERRORS, LzmaLimit

LOCAL = b"PK\x03\x04"
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # signature ... file name length, extra length
ENCRYPTED, STRONG, DESCRIPTOR, UTF8 = 0x1, 0x40, 0x8, 0x800
AES = 99
_FILETIME_EPOCH = 11_644_473_600  # seconds from 1601-01-01 (Windows FILETIME) to 1970-01-01
#: Errors of a damaged member (bad CRC, header mismatch, short data, bad deflate/bzip2/LZMA data).
MEMBER_ERRORS: tuple[type[Exception], ...] = (zipfile.BadZipFile, EOFError, *STREAM_ERRORS)


class RawReader:
    """Decompresses one member's raw bytes (stored, deflate, bzip2, LZMA) at most ``n`` bytes per read."""

    def __init__(self, raw: memoryview, method: int, crc: int | None, lzma_memory: int = LZMA_MEMORY) -> None:
        self.raw, self.method, self.crc, self.pos, self.running = raw, method, crc, 0, 0
        self.eos = method != 14  # LZMA in zip may have no end marker: its input's end ends it
        self.d: Any = None
        if method == 8:
            self.d = zlib.decompressobj(-15)
        elif method == 12:
            self.d = bz2.BZ2Decompressor()
        elif method == 14:
            self.d = _lzma(raw, lzma_memory)
            self.pos = 4 + int.from_bytes(raw[2:4], "little")

    @property
    def consumed(self) -> int:
        """Raw bytes used so far (exact once the stream has ended)."""
        left = len(getattr(self.d, "unused_data", b"")) + len(getattr(self.d, "unconsumed_tail", b""))
        return self.pos - left

    def _feed(self) -> bytes:
        chunk = bytes(self.raw[self.pos:self.pos + FEED])
        self.pos += len(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        out = self._next(n)
        if out:
            self.running = zlib.crc32(out, self.running)
        elif self.crc is not None and self.running != self.crc:
            raise zipfile.BadZipFile("Bad CRC-32")
        return out

    def _next(self, n: int) -> bytes:
        if self.d is None:
            chunk = bytes(self.raw[self.pos:self.pos + n])
            self.pos += len(chunk)
            return chunk
        while not self.d.eof:
            if self.method == 8:
                src = self.d.unconsumed_tail or self._feed()
            else:
                src = self._feed() if self.d.needs_input else b""
            out = self.d.decompress(src, n)
            if out:
                return out
            if not src and self.pos >= len(self.raw):
                if self.eos:
                    raise EOFError("member data ends before the end of its compressed stream")
                return b""
        return b""


def _lzma(raw: memoryview, memlimit: int) -> lzma.LZMADecompressor:
    """A raw LZMA1 decompressor for a zip LZMA member (version, properties size, 5 property bytes).
    liblzma has no memory limit for raw streams: the dictionary, nearly all of the decoder's memory,
    is checked against ``memlimit`` instead."""
    props = bytes(raw[4:9])
    if len(props) < 5:
        raise EOFError("LZMA properties cut short")
    lc, rest = props[0] % 9, props[0] // 9
    dict_size = int.from_bytes(props[1:5], "little")
    if dict_size > memlimit:
        raise LzmaLimit(f"an LZMA dictionary of {dict_size} bytes (more than {memlimit})")
    spec = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": rest % 5, "pb": rest // 5}
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[spec])


def _dos_time(date: int, time: int) -> str | None:
    try:
        return iso(datetime(1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F,
                            time >> 11, (time >> 5) & 0x3F, (time & 0x1F) * 2, tzinfo=timezone.utc))
    except ValueError:
        return None


def _modified(info: zipfile.ZipInfo) -> str | None:
    """The UTC modification time of the NTFS (0x000a) or extended timestamp (0x5455) extra field,
    else the DOS time (local time of the archiver, unknown zone) taken as UTC."""
    extra, pos = info.extra, 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 0x5455 and size >= 5 and pos + 9 <= len(extra) and extra[pos + 4] & 1:
            return timestamp(struct.unpack_from("<i", extra, pos + 5)[0])
        if tag == 0x000A and size >= 32 and pos + 20 <= len(extra) and extra[pos + 8:pos + 10] == b"\x01\x00":
            return timestamp(struct.unpack_from("<Q", extra, pos + 12)[0] // 10_000_000 - _FILETIME_EPOCH)
        pos += 4 + size
    (y, mo, d, h, mi, s) = info.date_time
    return _dos_time(((y - 1980) << 9) | (mo << 5) | d, (h << 11) | (mi << 5) | (s // 2))


def data_start(data: bytes, offset: int) -> int | None:
    """Where a member's data begins, from its local header at ``offset`` (None if none is there)."""
    if offset < 0 or offset + 30 > len(data) or data[offset:offset + 4] != LOCAL:
        return None
    name_len, extra_len = struct.unpack_from("<HH", data, offset + 26)
    return offset + 30 + name_len + extra_len


def overlapping(data: bytes, infos: list[zipfile.ZipInfo]) -> set[int]:
    """Indices of entries whose local header + data ranges overlap another entry's (a zip bomb)."""
    spans = []
    for index, info in enumerate(infos):
        start = data_start(data, info.header_offset)
        if start is not None:
            spans.append((info.header_offset, start + info.compress_size, index))
    spans.sort()
    found: set[int] = set()
    reach, owner = -1, -1
    for begin, end, index in spans:
        if begin < reach:
            found.update((index, owner))
        if end > reach:
            reach, owner = end, index
    return found


def _regular(info: zipfile.ZipInfo) -> bool:
    # endswith, not ZipInfo.is_dir(): a member may have an empty name, where is_dir() raises IndexError
    return not info.filename.endswith("/") and not (info.create_system == 3 and (info.external_attr >> 28) == 0xA)


def unpack_zip(data: bytes, unpacker: Unpacker) -> None:
    """Regular-file members of a zip; a zip whose central directory cannot be read is scanned for
    local headers instead (it raises if that finds nothing either)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):  # last: "zip file version 9.9"
        unpacker.flag("corrupt:central-directory")
        if not recover(data, unpacker):
            raise
        return
    with archive:
        infos = archive.infolist()
        skip = overlapping(data, infos)
        if skip:
            unpacker.flag("zip:overlapping-entries")
        for index, info in enumerate(infos):
            if not _regular(info):
                continue
            if not unpacker.admit():
                break
            if index not in skip:
                _extract(archive, data, info, unpacker)


def _extract(archive: zipfile.ZipFile, data: bytes, info: zipfile.ZipInfo, unpacker: Unpacker) -> None:
    encrypted, method = bool(info.flag_bits & ENCRYPTED), info.compress_type
    if encrypted and (method == AES or info.flag_bits & STRONG):
        unpacker.flag("password:unsupported-encryption")
        return
    if method not in (0, 8, 12, 14) or (encrypted and method not in (0, 8)):
        unpacker.flag("zip:unsupported-method")
        return
    start = data_start(data, info.header_offset)
    if start is None:
        unpacker.flag("corrupt:member")
        return
    sink = bytearray()
    if encrypted:
        if not _decrypt(archive, info, unpacker, sink):
            return
    else:
        try:
            read: Callable[[int], bytes]
            consumed: Callable[[], int] | None
            if method in (0, 8):
                read, consumed = opened(archive.open(info), info)
            else:
                reader = RawReader(memoryview(data)[start:start + info.compress_size], method, info.CRC,
                                   unpacker.caps.lzma_memory)
                read, consumed = reader.read, lambda: reader.consumed
            if not unpacker.drain(read, sink, info.compress_size, consumed):
                return
        except NotImplementedError:  # zipfile: patch data and other features it does not read
            unpacker.flag("zip:unsupported-method")
            return
        except LzmaLimit:
            unpacker.flag("limit:lzma-memory")
            return
        except MEMBER_ERRORS:
            unpacker.flag("corrupt:member")
            return
    unpacker.members.append(Member(info.orig_filename, bytes(sink), info.compress_size, _modified(info),
                                   encrypted, info.CRC))


def opened(stream: Any, info: zipfile.ZipInfo) -> tuple[Callable[[int], bytes], Callable[[], int] | None]:
    """The read function of a member ``zipfile`` opened, and how many of its compressed bytes it has
    decompressed so far: read from the archive (``ZipExtFile`` reads ahead) less what its inflater
    holds unconsumed (None if a later Python renames these)."""
    if not isinstance(getattr(stream, "_compress_left", None), int):
        return stream.read, None
    return stream.read, lambda: (info.compress_size - stream._compress_left
                                 - len(getattr(stream._decompressor, "unconsumed_tail", b"")))


def _decrypt(archive: zipfile.ZipFile, info: zipfile.ZipInfo, unpacker: Unpacker, sink: bytearray) -> bool:
    """Tries each password on a ZipCrypto member; a wrong one fails its check byte or its CRC."""
    for password in unpacker.caps.passwords:
        try:
            stream = archive.open(info, pwd=password)
        except RuntimeError:  # zipfile's "Bad password for file"
            continue
        del sink[:]
        try:
            read, consumed = opened(stream, info)
            return unpacker.drain(read, sink, info.compress_size, consumed)
        except MEMBER_ERRORS:
            continue
    unpacker.flag("password:none-worked")
    return False


def recover(data: bytes, unpacker: Unpacker) -> bool:
    """Extracts what local headers describe, in file order. True if any member was read."""
    view, pos = memoryview(data), data.find(LOCAL)
    while pos >= 0 and not unpacker.stopped:
        if pos + 30 > len(data):
            unpacker.flag("corrupt:truncated")
            break
        _, _, flags, method, time, date, crc, size, _, name_len, extra_len = _LOCAL.unpack_from(data, pos)
        start = pos + 30 + name_len + extra_len
        name = data[pos + 30:pos + 30 + name_len].decode("utf-8" if flags & UTF8 else "cp437", "replace")
        known = not (flags & DESCRIPTOR) and size != 0xFFFFFFFF
        if start + (size if known else 0) > len(data):
            unpacker.flag("corrupt:truncated")
            break
        end = start + size if known else start
        readable = method in (0, 8, 12, 14) if known else method in (8, 12)
        if name.endswith("/") or flags & ENCRYPTED or not readable:
            if flags & ENCRYPTED:  # not decrypted without a central directory
                unpacker.flag("password:unsupported-encryption")
            elif not name.endswith("/"):  # an unknown method, or stored data of unknown length
                unpacker.flag("zip:unrecoverable-member")
            pos = data.find(LOCAL, max(end, pos + 4))
            continue
        if not unpacker.admit():
            break
        sink = bytearray()
        try:
            reader = RawReader(view[start:end] if known else view[start:], method, crc if known else None,
                               unpacker.caps.lzma_memory)
            complete = unpacker.drain(reader.read, sink, size if known else None, lambda: reader.consumed)
        except EOFError:
            unpacker.flag("corrupt:truncated")
            break
        except LzmaLimit:
            unpacker.flag("limit:lzma-memory")
            complete = False
        except MEMBER_ERRORS:
            unpacker.flag("corrupt:member")
            complete = False
        if complete:
            if not known:
                size = reader.consumed
                end = start + size
            unpacker.members.append(Member(name, bytes(sink), size, _dos_time(date, time), False,
                                           crc if known else None))
        pos = data.find(LOCAL, max(end, pos + 4))
    return bool(unpacker.members)
