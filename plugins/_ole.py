"""Reading OLE2 compound files for the ``ole`` carver: streams under caps, ``\\x01Ole10Native`` packages
(MS-OLEDS 2.3.6 as written by the Packager) and VBA macros through oletools' olevba; and the OLE1
objects of RTF files for the ``rtf`` carver (oletools' RTF tokenizer, headers parsed here).

olefile is always given a file object, never bytes: given bytes shorter than 1536 it would open them as
a file name. Nothing is written to disk.
"""

from __future__ import annotations

import binascii
import io
import logging
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import olefile

NATIVE_STREAM = "\x01Ole10Native"


@dataclass(slots=True)
class Stream:
    """One stream: its path (joined with "/"), declared size, and bytes (None when not read)."""

    path: str
    size: int
    content: bytes | None = None


@dataclass(slots=True)
class Native:
    """The file packaged in an ``\\x01Ole10Native`` stream."""

    label: str
    path: str
    temp_path: str
    declared_size: int
    content: bytes


@dataclass(slots=True)
class Ole:
    """What was read of one compound file, and the soft failures met on the way."""

    streams: list[Stream] = field(default_factory=list)
    listed: int = 0
    flags: list[str] = field(default_factory=list)

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)


def _cstring(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\x00", at)
    return data[at:end].decode("latin-1"), end + 1


def parse_native(data: bytes, prefixed: bool = True) -> Native:
    """The packaged file of an ``\\x01Ole10Native`` stream (``prefixed`` by its total size; an OLE1
    Package object's native data is not); raises ValueError (or struct.error) when the header does not
    fit the data. Data cut short by the stream's end is returned cut (``declared_size`` says how much
    was announced)."""
    at = (4 if prefixed else 0) + 2  # total size, type
    label, at = _cstring(data, at)
    path, at = _cstring(data, at)
    at += 4  # reserved
    (temp_len,) = struct.unpack_from("<I", data, at)
    if at + 4 + temp_len > len(data):
        raise ValueError("Ole10Native temporary path runs past the stream")
    temp_path = data[at + 4:at + 4 + temp_len].split(b"\x00", 1)[0].decode("latin-1")
    at += 4 + temp_len
    (size,) = struct.unpack_from("<I", data, at)
    return Native(label, path, temp_path, size, data[at + 4:at + 4 + size])


def read_streams(content: bytes, max_streams: int, max_stream_bytes: int, max_total_bytes: int) -> Ole:
    """The streams of the compound file ``content`` in directory order, within the caps. Raises OSError
    when olefile cannot open it at all; a stream that cannot be read is listed without bytes and
    flagged ``corrupt:ole-stream`` (so is one shorter or longer than declared), tolerated structure
    defects ``corrupt:ole``."""
    result = Ole()
    total = 0
    with olefile.OleFileIO(io.BytesIO(content)) as ole:
        entries = ole.listdir(streams=True, storages=False)
        result.listed = len(entries)
        if len(entries) > max_streams:
            result.flag("limit:ole-streams")
        for entry in entries[:max_streams]:
            stream = Stream("/".join(entry), ole.get_size(entry))
            result.streams.append(stream)
            if stream.size > len(content):  # a stream cannot hold more than the file: a bad chain
                result.flag("corrupt:ole-stream")
            elif stream.size > max_stream_bytes:
                result.flag("limit:ole-stream-size")
            elif total + stream.size > max_total_bytes:
                result.flag("limit:ole-total-bytes")
            else:
                try:
                    stream.content = ole.openstream(entry).read()
                    total += stream.size
                except OSError:  # olefile's error for a FAT chain leaving the file or looping
                    result.flag("corrupt:ole-stream")
                    continue
                if len(stream.content) != stream.size:  # olefile returns what the chain held
                    result.flag("corrupt:ole-stream")
        if ole.parsing_issues:  # defects olefile tolerated (a FAT or directory entry out of range)
            result.flag("corrupt:ole")
    return result


def _drop_stomping_notice(record: logging.LogRecord) -> bool:
    """Filter of the ``olevba`` logger. For every file with macros that it reads from memory, olevba warns
    that it cannot detect VBA stomping there (that needs the P-code, which stoq never reads): a notice
    about olevba, not about the file. This one message is dropped; every other message passes."""
    return not str(record.msg).startswith("For now, VBA stomping cannot be detected")


def read_macros(content: bytes, max_modules: int,
                max_keywords: int) -> tuple[list[dict[str, Any]], list[dict[str, str]], bool] | None:
    """The VBA modules of ``content`` (``{"module", "stream", "code"}``) and olevba's analysis
    (``{"type", "keyword", "description"}``), and whether ``max_modules`` cut the list; None when
    oletools is not installed (it is the optional extra ``oletools``: it pulls in a GPL package)."""
    try:
        from oletools.olevba import VBA_Parser
    except ImportError:
        return None
    logging.getLogger("olevba").addFilter(_drop_stomping_notice)  # added once: addFilter skips a repeat
    parser = VBA_Parser("payload", data=content, disable_pcode=True)  # pcodedmp (GPL) is never imported
    try:
        if not parser.detect_vba_macros():
            return [], [], False
        modules: list[dict[str, Any]] = []
        capped = False
        for _, stream_path, module, code in parser.extract_macros():
            if len(modules) >= max_modules:
                capped = True
                break
            modules.append({"module": module, "stream": stream_path,
                            "code": code.encode("utf-8", "replace") if isinstance(code, str) else code})
        keywords = [{"type": t, "keyword": k, "description": d}
                    for t, k, d in parser.analyze_macros()[:max_keywords]]
        return modules, keywords, capped
    finally:
        parser.close()


@dataclass(slots=True)
class Ole1:
    """An OLE1 object (MS-OLEDS 2.2.4/2.2.6): class name, format (1 linked, 2 embedded), native data."""

    class_name: str
    format_id: int
    declared_size: int
    data: bytes


def parse_ole1(data: bytes) -> Ole1:
    """The OLE1 object header of RTF ``\\objdata``; raises ValueError or struct.error if it is none."""
    format_id = struct.unpack_from("<4xI", data)[0]
    if format_id not in (1, 2):
        raise ValueError(f"not an OLE1 object (format {format_id})")
    at, names = 8, []
    for _ in range(3):  # class, topic, item: u32 length (with NUL) + ANSI
        (length,) = struct.unpack_from("<I", data, at)
        if at + 4 + length > len(data):
            raise ValueError("OLE1 name runs past the object")
        names.append(data[at + 4:at + 4 + length].split(b"\x00", 1)[0].decode("latin-1"))
        at += 4 + length
    if format_id == 1:
        return Ole1(names[0], 1, 0, b"")
    (size,) = struct.unpack_from("<I", data, at)
    return Ole1(names[0], 2, size, data[at + 4:at + 4 + size])
