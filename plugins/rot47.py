"""The ``rot47`` decoder: rotates the printable ASCII characters ``!``..``~`` by 47 places."""

from __future__ import annotations

from stoq.plugin import Payload, Result
from stoq_plugins._decode import ROT47, Decoder, DecodeOptions


class Rot47Plugin(Decoder):
    """Applies rot47 to a payload (its own inverse) and emits the result as one child.

    Bytes outside ``!``..``~`` (33-126) are kept. Output ``{"decoded_size", "skipped"}``: the child is
    emitted unless ``skipped`` says why not (empty, too-small, unchanged: no printable character,
    too-large).
    """

    name = "rot47"
    version = "1.0"

    def scan(self, payload: Payload, options: DecodeOptions) -> Result:
        return self.emit(payload, payload.content.translate(ROT47), options)
