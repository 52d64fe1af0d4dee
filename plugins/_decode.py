"""Decoding logic behind the decoder plugins (b64, b85, rot47, bitrot, xor), and their shared base.

The codecs are pure functions on bytes. ``Decoder`` holds what every decoder shares: the input cap
(``max_size``: larger payloads are declined by ``accepts``) and the rule for emitting a child (decoding
succeeded, the result is not empty, is at least ``min_size`` bytes and differs from the input).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from pydantic import Field

from stoq.plugin import DecoderPlugin, Extracted, Payload, PluginOptions, Result

MiB = 1 << 20
WHITESPACE = b" \t\r\n\v\f"
B64_STANDARD = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
B64_URLSAFE = re.compile(rb"[A-Za-z0-9_-]+={0,2}")
#: rot47: each of the 94 printable characters ``!``..``~`` moves 47 places along that range.
ROT47 = bytes.maketrans(bytes(range(33, 127)), bytes(range(80, 127)) + bytes(range(33, 80)))


class DecodeOptions(PluginOptions):
    """Options every decoder has."""

    min_size: int = Field(16, ge=0, description="Smallest decoded output emitted as a child, in bytes.")
    max_size: int = Field(64 * MiB, ge=0, description="Largest input decoded, in bytes (larger ones are declined).")


class Decoder(DecoderPlugin):
    """Base of the bundled decoders: the input cap and the rule for emitting the decoded child."""

    Options = DecodeOptions
    #: File name suffixes removed from the payload's name to name the child (e.g. ``.b64``).
    suffixes: tuple[str, ...] = ()

    def accepts(self, payload: Payload) -> bool:
        return payload.size <= self.options.max_size and super().accepts(payload)

    def emit(self, payload: Payload, decoded: bytes | None, options: DecodeOptions, **data: Any) -> Result:
        """The result: ``{"decoded_size", **data, "skipped"}`` and one child when ``decoded`` is usable.

        ``skipped`` names why no child was emitted: invalid (decoding failed), empty, too-small,
        unchanged (same bytes as the input), too-large (input over ``max_size``); None when emitted.
        """
        if payload.size > options.max_size:
            reason: str | None = "too-large"
        elif decoded is None:
            reason = "invalid"
        elif not decoded:
            reason = "empty"
        elif len(decoded) < options.min_size:
            reason = "too-small"
        elif decoded == payload.content:
            reason = "unchanged"
        else:
            reason = None
        out = {"decoded_size": None if decoded is None else len(decoded), **data, "skipped": reason}
        if reason is not None or decoded is None:
            return Result(data=out)
        child = Extracted(decoded, filename=self.child_name(payload.filename), meta={"decoder": self.name, **data})
        return Result(data=out, children=[child])

    def child_name(self, filename: str | None) -> str | None:
        """The payload's name without one of ``suffixes`` (None when it has none of them)."""
        for suffix in self.suffixes:
            if filename and len(filename) > len(suffix) and filename.lower().endswith(suffix):
                return filename[: -len(suffix)]
        return None


def b64(data: bytes) -> tuple[bytes, str] | None:
    """Base64 text (whitespace ignored, padding optional) -> (bytes, "standard" or "urlsafe"), else None."""
    text = data.translate(None, WHITESPACE)
    for variant, pattern, altchars in (("standard", B64_STANDARD, None), ("urlsafe", B64_URLSAFE, b"-_")):
        if pattern.fullmatch(text):
            break
    else:
        return None
    body = text.rstrip(b"=")
    padded = body + b"=" * (-len(body) % 4)
    if len(body) % 4 == 1 or text not in (body, padded):  # impossible length, or wrong padding
        return None
    try:
        return base64.b64decode(padded, altchars, validate=True), variant
    except binascii.Error:
        return None


def b85(data: bytes) -> tuple[bytes, str] | None:
    """Base85 text (RFC 1924 alphabet, or Adobe ``<~ ~>`` Ascii85) -> (bytes, variant), else None."""
    text = data.translate(None, WHITESPACE)
    try:
        if text.startswith(b"<~") and text.endswith(b"~>"):
            return base64.a85decode(text, adobe=True), "ascii85"
        return base64.b85decode(text), "base85"
    except ValueError:
        return None


def bitrot_table(bits: int) -> bytes:
    """Translation table rotating each byte left by ``bits`` (4: nibble swap)."""
    return bytes(((b << bits) | (b >> (8 - bits))) & 0xFF for b in range(256))


def xor_table(key: int) -> bytes:
    return bytes(b ^ key for b in range(256))


def xor(data: bytes, key: bytes) -> bytes:
    """``data`` XOR ``key`` repeated from the first byte, one translate per key position."""
    if len(key) == 1:
        return data.translate(xor_table(key[0]))
    out = bytearray(len(data))
    for i, k in enumerate(key):
        out[i::len(key)] = data[i::len(key)].translate(xor_table(k))
    return bytes(out)


def parse_key(value: int | str) -> bytes:
    """An XOR key: an int or decimal string 0-255 (one byte), or ``0x`` + hex digits (any length)."""
    if isinstance(value, str):
        value = value.strip()
        if value.lower().startswith("0x"):
            key = bytes.fromhex(value[2:])
            if not key:
                raise ValueError("empty XOR key")
            return key
        if not value.isdigit():
            raise ValueError(f"XOR key {value!r}: give 0-255 or 0x-prefixed hex")
        value = int(value)
    if not 0 <= value <= 255:
        raise ValueError(f"single-byte XOR key {value} is not in 0-255")
    return bytes([value])


def neighbours(data: bytes) -> bytes:
    """Each byte XOR the next: the same for ``data`` and ``data`` XORed with any single byte."""
    return (int.from_bytes(data[:-1], "big") ^ int.from_bytes(data[1:], "big")).to_bytes(max(len(data) - 1, 0), "big")


def find_xor_key(data: bytes, plaintexts: list[bytes], chunk: int = MiB) -> tuple[int, int, bytes] | None:
    """The single-byte key (1-255) under which a known plaintext occurs earliest in ``data``:
    (key, offset, plaintext), as YARA's ``xor`` modifier finds it; None if no plaintext occurs.

    Rather than one search per key (255 per plaintext), one search of the plaintext's key-independent
    ``neighbours`` in those of ``data``, a chunk at a time; the key is then the first byte's XOR."""
    signatures = [(plain, neighbours(plain)) for plain in plaintexts if len(plain) >= 2]
    overlap = max((len(plain) for plain, _ in signatures), default=0)
    for start in range(0, len(data), chunk):
        window = data[start:start + chunk + overlap]
        diff, best = neighbours(window), None
        for plain, signature in signatures:
            at = diff.find(signature)
            while 0 <= at < chunk and (best is None or at < best[1]):
                if window[at] != plain[0]:  # key 0 is the plaintext itself: not encoded
                    best = (window[at] ^ plain[0], at, plain)
                    break
                at = diff.find(signature, at + 1)
        if best is not None:
            return best[0], start + best[1], best[2]
    return None
