"""Fuzz harness: the ``pe`` carver (plugins/pe.py, plugins/_carve.py): PE files embedded in other data."""

from _harness import Target, corpus, main

TARGET = Target("pe", "stoq_plugins.pe:PePlugin", "application/octet-stream",
                lambda: corpus("test.exe", "test_xor.exe") + [b"junk" * 8 + b"MZ" + bytes(58) + b"\x40\0\0\0PE\0\0"])

if __name__ == "__main__":
    main(TARGET)
