"""The ``xor`` decoder: XORs a payload with a given key, or with the single-byte key that reveals a
known plaintext (YARA's ``xor`` string modifier convention)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from stoq.plugin import Payload, Result
from stoq_plugins._decode import Decoder, DecodeOptions, find_xor_key, parse_key, xor

#: stoQ's dispatch rule names carry the key: ``xor_This_program_key_<n>`` (decimal).
RULE_KEY = re.compile(r"_key_(\d{1,3})$")
#: The DOS stub messages of Microsoft's and Borland's linkers.
DOS_STUBS = ("This program cannot be run in DOS mode", "This program must be run under Win32")


class XorPlugin(Decoder):
    """XORs a payload with a key and emits the result as one child.

    The key is, in this order: the ``key`` option (also set by a dispatch rule's ``key`` meta), the
    ``_key_<n>`` suffix of a dispatch rule that sent the payload (stoQ's ``xor_This_program_key_<n>``
    rules), or the single byte 1-255 under which one of ``plaintexts`` occurs earliest in the payload
    (what YARA's ``xor`` modifier matches). A multi-byte key repeats from the payload's first byte.
    Output ``{"decoded_size", "key" (0x-hex or null), "key_source" ("option", "rule", "plaintext" or
    null), "plaintext_offset", "skipped"}``; ``skipped`` is "no-key" when no key was found, else as
    for every decoder (empty, too-small, unchanged, too-large). The child's meta holds the key too.
    """

    name = "xor"
    version = "1.0"

    class Options(DecodeOptions):
        key: int | str | None = Field(None, description="XOR key: 0-255 for one byte, or 0x-prefixed hex for "
                                                         "several (none: found from the rules or plaintexts).")
        plaintexts: list[str] = Field(list(DOS_STUBS), description="Known plaintexts (2 bytes or more) "
                                      "searched under every single-byte key when no key is given.")

        @field_validator("key")
        @classmethod
        def _valid_key(cls, value: int | str | None) -> int | str | None:
            if value is not None:
                parse_key(value)  # raises ValueError: the options are refused
            return value

    def scan(self, payload: Payload, options: Options) -> Result:
        key, source, offset = None, None, None
        if options.key is not None:
            key, source = parse_key(options.key), "option"
        else:
            for rule in payload.dispatch_rules:
                found = RULE_KEY.search(rule)
                if found and int(found.group(1)) <= 255:
                    key, source = bytes([int(found.group(1))]), "rule"
                    break
        if key is None and payload.size <= options.max_size:
            hit = find_xor_key(payload.content, [p.encode() for p in options.plaintexts])
            if hit is not None:
                key, source, offset = bytes([hit[0]]), "plaintext", hit[1]
        info = {"key": None if key is None else "0x" + key.hex(), "key_source": source, "plaintext_offset": offset}
        if key is None and payload.size <= options.max_size:
            return Result(data={"decoded_size": None, **info, "skipped": "no-key"})
        return self.emit(payload, None if key is None else xor(payload.content, key), options, **info)
