"""Fuzz harness: the ``b64`` decoder (plugins/b64.py, plugins/_decode.py)."""

import base64

from _harness import Target, corpus, main

TARGET = Target("b64", "stoq_plugins.b64:B64Plugin", "text/plain",
                lambda: [base64.b64encode(bytes(range(256))), base64.encodebytes(b"hello world " * 30),
                         base64.urlsafe_b64encode(b"\xff\xfe" * 40)] + corpus("test.b64"))

if __name__ == "__main__":
    main(TARGET)
