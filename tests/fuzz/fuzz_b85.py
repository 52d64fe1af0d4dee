"""Fuzz harness: the ``b85`` decoder (plugins/b85.py, plugins/_decode.py): base85 and Ascii85."""

import base64

from _harness import Target, main

TARGET = Target("b85", "stoq_plugins.b85:B85Plugin", "text/plain",
                lambda: [base64.b85encode(bytes(range(256))), base64.a85encode(b"hello world " * 30, adobe=True),
                         base64.a85encode(b"\0" * 64, foldspaces=True)])

if __name__ == "__main__":
    main(TARGET)
