"""The ``b64`` decoder: base64 text (standard or URL-safe alphabet) to bytes."""

from __future__ import annotations

from stoq.plugin import Payload, Result
from stoq_plugins._decode import Decoder, DecodeOptions, b64


class B64Plugin(Decoder):
    """Decodes a payload of base64 text (standard or URL-safe alphabet) into one child.

    Whitespace and line breaks are ignored and padding is optional; any other character, a mix of the
    two alphabets or wrong padding means the payload is not base64: no child, and output
    ``{"decoded_size": null, "variant": null, "skipped": "invalid"}``. Otherwise output
    ``{"decoded_size", "variant" ("standard" or "urlsafe"), "skipped"}``; the child (named after the
    payload without ``.b64``/``.base64``) is emitted unless ``skipped`` says why not (see ``Decoder``).
    """

    name = "b64"
    version = "1.0"
    suffixes = (".b64", ".base64")

    def scan(self, payload: Payload, options: DecodeOptions) -> Result:
        decoded = b64(payload.content)
        if decoded is None:
            return self.emit(payload, None, options, variant=None)
        return self.emit(payload, decoded[0], options, variant=decoded[1])
