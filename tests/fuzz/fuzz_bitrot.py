"""Fuzz harness: the ``bitrot`` decoder (plugins/bitrot.py, plugins/_decode.py): rotated bytes."""

from _harness import Target, corpus, main


def seeds() -> list[bytes]:
    data = (corpus("test.exe") or [b"MZ" + bytes(62) + b"This program cannot be run in DOS mode"])[0][:4096]
    return [bytes(((b << 3) | (b >> 5)) & 0xFF for b in data), data]


TARGET = Target("bitrot", "stoq_plugins.bitrot:BitrotPlugin", "application/octet-stream", seeds)

if __name__ == "__main__":
    main(TARGET)
