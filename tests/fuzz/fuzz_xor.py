"""Fuzz harness: the ``xor`` decoder (plugins/xor.py, plugins/_decode.py): key given or found."""

from _harness import Target, corpus, main


def seeds() -> list[bytes]:
    text = b"This program cannot be run in DOS mode. http://example.com/ " * 8
    return [bytes(b ^ 0x5A for b in text), bytes(b ^ k for b, k in zip(text, b"key" * 200))] + corpus("test_xor.exe")


TARGET = Target("xor", "stoq_plugins.xor:XorPlugin", "application/octet-stream", seeds)

if __name__ == "__main__":
    main(TARGET)
