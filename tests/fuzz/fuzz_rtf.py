"""Fuzz harness: the ``rtf`` carver (plugins/rtf.py, plugins/_rtfobj.py, oletools' rtfobj): embedded
objects of RTF documents, OLE1 and Package (Ole10Native) headers."""

import struct

from _harness import Target, main


def ole1(class_name: bytes, data: bytes) -> bytes:
    """An OLE1 embedded object: version, format 2 (embedded), class, topic, item, the native data."""
    def lp(s: bytes) -> bytes:
        return struct.pack("<I", len(s) + 1) + s + b"\0"
    return struct.pack("<II", 0x0501, 2) + lp(class_name) + lp(b"") + lp(b"") + struct.pack("<I", len(data)) + data


def native(name: bytes, content: bytes) -> bytes:
    body = (b"\x02\x00" + name + b"\0" + b"C:\\" + name + b"\0" + b"\0\0\x03\0" + struct.pack("<I", 4) + b"C:\\x\0"
            + struct.pack("<I", len(content)) + content)
    return struct.pack("<I", len(body)) + body


def rtf(obj: bytes) -> bytes:
    return b"{\\rtf1\\ansi{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata " + obj.hex().encode() + b"}}}"


TARGET = Target("rtf", "stoq_plugins.rtf:RtfPlugin", "text/rtf",
                lambda: [rtf(ole1(b"Package", native(b"a.txt", b"hello"))), rtf(ole1(b"Word.Document.8", b"\xd0\xcf" * 8)),
                         b"{\\rtf1 plain}"])

if __name__ == "__main__":
    main(TARGET)
