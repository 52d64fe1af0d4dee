"""The ``bitrot`` decoder against a per-byte rotation loop."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from stoq.plugin import Payload, Result
from stoq_plugins.bitrot import BitrotPlugin

MiB = 1 << 20


def rotate_left(data: bytes, bits: int) -> bytes:
    out = bytearray()
    for byte in data:
        value = byte
        for _ in range(bits):  # one bit at a time: the top bit comes round to the bottom
            value = ((value << 1) & 0xFF) | (value >> 7)
        out.append(value)
    return bytes(out)


def scan(make_payload, content: bytes, **options) -> Result:
    plugin = BitrotPlugin(BitrotPlugin.Options(**options))
    plugin.setup()
    payload = make_payload(content)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


@pytest.mark.parametrize("bits", range(1, 8))
def test_rotation_matches_loop(corpus: Path, make_payload, bits: int) -> None:
    raw = (corpus / "test.exe").read_bytes()
    result = scan(make_payload, raw, bits=bits)
    [child] = result.children
    assert child.content == rotate_left(raw, bits)
    assert hashlib.sha256(child.content).hexdigest() == hashlib.sha256(rotate_left(raw, bits)).hexdigest()
    assert child.meta == {"decoder": "bitrot", "bits": bits}
    assert result.data == {"decoded_size": len(raw), "bits": bits, "skipped": None}


def test_default_is_nibble_swap_and_round_trip(corpus: Path, make_payload) -> None:
    raw = (corpus / "test.txt").read_bytes()
    swapped = bytes(((b & 0x0F) << 4) | (b >> 4) for b in raw)
    assert scan(make_payload, raw).children[0].content == swapped
    encoded = rotate_left(raw, 3)
    assert scan(make_payload, encoded, bits=5).children[0].content == raw  # right 3 == left 5


def test_unchanged_min_size_and_bad_options(make_payload) -> None:
    invariant = b"\x00\xff\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee" * 2  # nibble-swap fixed points
    assert scan(make_payload, invariant).data == {"decoded_size": 32, "bits": 4, "skipped": "unchanged"}
    assert scan(make_payload, b"\x12\x34").data["skipped"] == "too-small"
    assert scan(make_payload, b"\x12\x34", min_size=2).children[0].content == b"\x21\x43"
    for bits in (0, 8, -1):
        with pytest.raises(ValidationError):
            BitrotPlugin.Options(bits=bits)


def test_huge_input_is_declined() -> None:
    assert not BitrotPlugin().accepts(Payload(b"\x01" * (64 * MiB + 1), "t", None, "x", "", 0))
    assert not BitrotPlugin(BitrotPlugin.Options(max_size=0)).accepts(Payload(b"\x01", "t", None, "x", "", 0))
