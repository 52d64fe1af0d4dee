"""The ``rot47`` decoder against a reference written here character by character."""

from __future__ import annotations

import hashlib
from pathlib import Path

from stoq.plugin import Payload, Result
from stoq_plugins.rot47 import Rot47Plugin

MiB = 1 << 20


def reference(data: bytes) -> bytes:
    """rot47 as usually written: a map of the 94 printable characters built by a loop."""
    mapping = {}
    for code in range(ord("!"), ord("~") + 1):
        shifted = code + 47
        mapping[code] = shifted if shifted <= ord("~") else shifted - 94
    return bytes(mapping.get(b, b) for b in data)


def scan(make_payload, content: bytes, **options) -> Result:
    plugin = Rot47Plugin(Rot47Plugin.Options(**options))
    plugin.setup()
    payload = make_payload(content)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def test_known_text(make_payload) -> None:
    result = scan(make_payload, b"The Quick Brown Fox Jumps Over The Lazy Dog.")
    assert result.children[0].content == b"%96 \"F:4< qC@H? u@I yF>AD ~G6C %96 {2KJ s@8]"
    assert result.children[0].meta == {"decoder": "rot47"} and result.children[0].filename is None


def test_corpus_file_and_involution(corpus: Path, make_payload) -> None:
    raw = (corpus / "test.exe").read_bytes()  # binary: bytes outside ! .. ~ are kept
    encoded = reference(raw)
    result = scan(make_payload, encoded)
    [child] = result.children
    assert child.content == reference(encoded) == raw
    assert hashlib.sha256(child.content).hexdigest() == hashlib.sha256(raw).hexdigest()
    assert result.data == {"decoded_size": len(raw), "skipped": None}


def test_all_bytes(make_payload) -> None:
    every = bytes(range(256))
    assert scan(make_payload, every).children[0].content == reference(every)


def test_unchanged_and_min_size(make_payload) -> None:
    nothing_printable = b" \t\r\n\x00\x7f\x80\xff" * 4
    result = scan(make_payload, nothing_printable)
    assert result.children == [] and result.data == {"decoded_size": 32, "skipped": "unchanged"}
    assert scan(make_payload, b"short").data == {"decoded_size": 5, "skipped": "too-small"}
    assert scan(make_payload, b"short", min_size=5).children[0].content == b"D9@CE"
    assert scan(make_payload, b"").data == {"decoded_size": 0, "skipped": "empty"}


def test_huge_input_is_declined() -> None:
    assert not Rot47Plugin().accepts(Payload(b"a" * (64 * MiB + 1), "t", None, "text/plain", "", 0))
    assert Rot47Plugin(Rot47Plugin.Options(max_size=3)).accepts(Payload(b"abc", "t", None, "text/plain", "", 0))
