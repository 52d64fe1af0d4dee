"""The ``b85`` decoder against ``base64.b85decode`` and ``base64.a85decode``."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from stoq.plugin import Payload, Result
from stoq_plugins.b85 import B85Plugin

MiB = 1 << 20


def scan(make_payload, content: bytes, filename: str | None = None, **options) -> Result:
    plugin = B85Plugin(B85Plugin.Options(**options))
    plugin.setup()
    payload = make_payload(content, "text/plain", filename)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def test_base85_of_a_corpus_file(corpus: Path, make_payload) -> None:
    raw = (corpus / "test.exe").read_bytes()
    text = base64.b85encode(raw)
    wrapped = b"\n".join(text[i:i + 80] for i in range(0, len(text), 80)) + b"\n"
    expected = base64.b85decode(text)
    result = scan(make_payload, wrapped, "test.exe.b85")
    [child] = result.children
    assert child.content == expected == raw
    assert hashlib.sha256(child.content).hexdigest() == hashlib.sha256(raw).hexdigest()
    assert (child.filename, child.meta) == ("test.exe", {"decoder": "b85", "variant": "base85"})
    assert result.data == {"decoded_size": len(raw), "variant": "base85", "skipped": None}


def test_ascii85_adobe(corpus: Path, make_payload) -> None:
    raw = (corpus / "test.txt").read_bytes()
    text = base64.a85encode(raw, adobe=True, wrapcol=72)
    result = scan(make_payload, text)
    assert [c.content for c in result.children] == [base64.a85decode(text, adobe=True)] == [raw]
    assert result.data["variant"] == "ascii85" and result.children[0].filename is None


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02 binary \xff\xfe" * 10,
    b"has, commas and \"quotes\" and [brackets]: not in the alphabet",
    b"~~~~~~~~~~",        # overflows a 32-bit group
    b"<~ 9jqo^ \x00 ~>",  # Ascii85 frame around a byte outside the alphabet
])
def test_garbage_yields_no_child(make_payload, garbage: bytes) -> None:
    result = scan(make_payload, garbage)
    assert result.children == []
    assert result.data == {"decoded_size": None, "variant": None, "skipped": "invalid"}


def test_empty_and_min_size(make_payload) -> None:
    assert scan(make_payload, b"  \n").data == {"decoded_size": 0, "variant": "base85", "skipped": "empty"}
    short = base64.b85encode(b"twelve bytes")
    assert scan(make_payload, short).data["skipped"] == "too-small"
    assert [c.content for c in scan(make_payload, short, min_size=12).children] == [b"twelve bytes"]


def test_huge_input_is_declined() -> None:
    assert not B85Plugin().accepts(Payload(b"0" * (64 * MiB + 5), "t", None, "text/plain", "", 0))
    assert not B85Plugin(B85Plugin.Options(max_size=10)).accepts(Payload(b"0" * 11, "t", None, "text/plain", "", 0))
