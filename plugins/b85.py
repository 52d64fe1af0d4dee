"""The ``b85`` decoder: base85 text (RFC 1924 / Python ``b85``, or Adobe Ascii85) to bytes."""

from __future__ import annotations

from stoq.plugin import Payload, Result
from stoq_plugins._decode import Decoder, DecodeOptions, b85


class B85Plugin(Decoder):
    """Decodes a payload of base85 text into one child: Python's ``b85`` alphabet, or ``<~ ~>`` Ascii85.

    Whitespace is ignored. Output ``{"decoded_size", "variant" ("base85", "ascii85" or null when the
    text does not decode), "skipped"}``; the child (named after the payload without ``.b85``) is
    emitted unless ``skipped`` says why not (invalid, empty, too-small, unchanged, too-large).
    """

    name = "b85"
    version = "1.0"
    suffixes = (".b85", ".a85")

    def scan(self, payload: Payload, options: DecodeOptions) -> Result:
        decoded = b85(payload.content)
        if decoded is None:
            return self.emit(payload, None, options, variant=None)
        return self.emit(payload, decoded[0], options, variant=decoded[1])
