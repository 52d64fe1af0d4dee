"""Fuzz harness: the ``rot47`` decoder (plugins/rot47.py, plugins/_decode.py)."""

from _harness import Target, main

ROT = bytes.maketrans(bytes(range(33, 127)), bytes(range(33, 127))[47:] + bytes(range(33, 127))[:47])

TARGET = Target("rot47", "stoq_plugins.rot47:Rot47Plugin", "text/plain",
                lambda: [b"powershell -enc http://example.com/a.exe".translate(ROT), b"plain text"])

if __name__ == "__main__":
    main(TARGET)
