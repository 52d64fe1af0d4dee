"""Fuzz harness: the ``swf`` carver (plugins/swf.py, plugins/_swf.py): FWS, zlib CWS and LZMA ZWS
movies found in other data, their lengths checked and inflated under caps."""

import lzma
import struct
import zlib

from _harness import Target, main


def seeds() -> list[bytes]:
    inner = bytes.fromhex("7800055f00000fa000") + bytes.fromhex("00180100") + struct.pack("<HH", 1 << 6, 0)
    fws = b"FWS\x0a" + struct.pack("<I", 8 + len(inner)) + inner
    cws = b"CWS\x0a" + struct.pack("<I", 8 + len(inner)) + zlib.compress(inner)
    alone = lzma.compress(inner, format=lzma.FORMAT_ALONE)
    data = alone[13:]
    zws = b"ZWS\x0a" + struct.pack("<II", 8 + len(inner), len(data)) + alone[:5] + data
    return [fws, cws, zws, b"prefix" + cws + b"suffix"]


TARGET = Target("swf", "stoq_plugins.swf:SwfPlugin", "application/octet-stream", seeds)

if __name__ == "__main__":
    main(TARGET)
