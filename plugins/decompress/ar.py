"""Unix ar archives (deb packages, static libraries), read in process."""

from __future__ import annotations

import io

from stoq_plugins.decompress.budget import Member, Unpacker, timestamp

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
