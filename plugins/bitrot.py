"""The ``bitrot`` decoder: rotates the bits of every byte (4 bits by default: a nibble swap)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Payload, Result
from stoq_plugins._decode import Decoder, DecodeOptions, bitrot_table


class BitrotPlugin(Decoder):
    """Rotates each byte of a payload left by ``bits`` bits and emits the result as one child.

    A right rotation by n is a left rotation by 8 - n. Output ``{"decoded_size", "bits", "skipped"}``;
    the child (meta ``bits``) is emitted unless ``skipped`` says why not (empty, too-small, unchanged,
    too-large).
    """

    name = "bitrot"
    version = "1.0"

    class Options(DecodeOptions):
        bits: int = Field(4, ge=1, le=7, description="Bits each byte is rotated left by (1-7; 4 swaps nibbles).")

    def scan(self, payload: Payload, options: Options) -> Result:
        return self.emit(payload, payload.content.translate(bitrot_table(options.bits)), options, bits=options.bits)
