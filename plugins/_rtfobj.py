"""oletools' RTF tokenizer, adapted for the ``rtf`` carver. Imported only when that plugin is set up:
oletools is the optional extra ``oletools`` (it depends on a GPL package, pcodedmp, that stoq never
imports)."""

from __future__ import annotations

import binascii
import re

from oletools.rtfobj import RtfObjParser


class RtfObjects(RtfObjParser):
    """oletools' RTF tokenizer (with its emulation of Word's hex quirks), keeping each ``\\objdata``
    as (offset, bytes) and stopping after ``max_objects``. It skips rtfobj's own object handling (a
    bare ``except``, and olefile given short bytes, which it opens as a file name)."""

    def __init__(self, data: bytes, max_objects: int, max_object_bytes: int) -> None:
        super().__init__(data)
        self.max_objects, self.max_object_bytes = max_objects, max_object_bytes
        self.found: list[tuple[int, bytes]] = []
        self.flags: list[str] = []

    def close_destination(self, destination) -> None:
        if destination.cword != b"objdata":
            return
        if len(self.found) >= self.max_objects:
            if "limit:rtf-objects" not in self.flags:
                self.flags.append("limit:rtf-objects")
            self.index = self.size  # stop tokenizing
            return
        hexdata = re.sub(rb"[^a-fA-F0-9]", b"", destination.data)
        if len(hexdata) // 2 > self.max_object_bytes:
            if "limit:rtf-object-size" not in self.flags:
                self.flags.append("limit:rtf-object-size")
            return
        self.found.append((destination.start, binascii.unhexlify(hexdata[:len(hexdata) & ~1])))

    def _bin(self, matchobject, param) -> None:
        """``\\bin`` as oletools reads it, except as the file's very last token: there oletools' own reads
        past the end (``ord(b"")``, a TypeError found by tests/fuzz/fuzz_rtf.py); no binary data follows."""
        if self.index >= self.size:
            self.bin(b"")
            return
        super()._bin(matchobject, param)
