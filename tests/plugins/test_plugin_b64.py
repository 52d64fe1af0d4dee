"""The ``b64`` decoder against ``base64.b64decode`` on the corpus sample and on hostile text."""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path

import pytest

from stoq.plugin import Payload, Result
from stoq_plugins.b64 import B64Plugin

MiB = 1 << 20


def scan(make_payload, content: bytes, filename: str | None = None, **options) -> Result:
    plugin = B64Plugin(B64Plugin.Options(**options))
    plugin.setup()
    payload = make_payload(content, "text/plain", filename)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


def test_corpus_sample(corpus: Path, make_payload) -> None:
    text = (corpus / "test.b64").read_bytes()
    expected = base64.b64decode(b"".join(text.split()))
    result = scan(make_payload, text, "test.b64")
    [child] = result.children
    assert child.content == expected
    assert hashlib.sha256(child.content).hexdigest() == hashlib.sha256(expected).hexdigest()
    assert child.content == (corpus / "test.txt").read_bytes()  # the sample is test.txt encoded
    assert child.filename == "test"
    assert child.meta == {"decoder": "b64", "variant": "standard"}
    assert result.data == {"decoded_size": len(expected), "variant": "standard", "skipped": None}
    assert result.flags == []


def test_whitespace_and_line_breaks_are_ignored(corpus: Path, make_payload) -> None:
    raw = (corpus / "test.exe").read_bytes()
    wrapped = base64.encodebytes(raw).replace(b"\n", b"\r\n")  # 76-column MIME lines, CRLF
    result = scan(make_payload, b"  \t" + wrapped + b"\n\n", "blob.BASE64")
    assert [c.content for c in result.children] == [raw]
    assert result.children[0].filename == "blob"


def test_urlsafe_and_unpadded() -> None:
    raw = random.Random(7).randbytes(3000)
    urlsafe = base64.urlsafe_b64encode(raw)
    assert b"-" in urlsafe and b"_" in urlsafe
    plugin = B64Plugin()
    payload = Payload(urlsafe, "t", None, "text/plain", "", 0)
    result = plugin.scan(payload, plugin.options)
    assert result.children[0].content == raw and result.data["variant"] == "urlsafe"
    unpadded = base64.b64encode(raw[:101]).rstrip(b"=")  # 101 bytes: one "=" dropped
    assert len(unpadded) % 4 == 3
    result = plugin.scan(Payload(unpadded, "t", None, "text/plain", "", 0), plugin.options)
    assert result.children[0].content == raw[:101]
    assert result.children[0].filename is None


@pytest.mark.parametrize("garbage", [
    b"\x00\x01\x02 binary \xff\xfe" * 10,
    b"SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkIQ+-" * 4,   # standard and urlsafe characters mixed
    b"SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkIQ==SGVs",  # padding in the middle
    b"SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkIQ===",     # too much padding
    b"SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkIQ=",       # wrong padding
    b"SGVsbG8gV29ybGQhIEhlbGxvIFdvcmxkIQABC",     # length 4n+1: not base64
    b"Hello, World! this is plain text.",
    b"",
    b" \r\n\t ",
])
def test_garbage_yields_no_child(make_payload, garbage: bytes) -> None:
    result = scan(make_payload, garbage)
    assert result.children == []
    assert result.data == {"decoded_size": None, "variant": None, "skipped": "invalid"}


def test_min_size(make_payload) -> None:
    short = base64.b64encode(b"fifteen bytes!!")
    assert scan(make_payload, short).data == {"decoded_size": 15, "variant": "standard", "skipped": "too-small"}
    assert scan(make_payload, short).children == []
    assert [c.content for c in scan(make_payload, short, min_size=15).children] == [b"fifteen bytes!!"]
    assert scan(make_payload, b"AAAA", min_size=0).children[0].content == b"\x00\x00\x00"


def test_huge_input_is_declined() -> None:
    plugin = B64Plugin()
    huge = Payload(b"A" * (64 * MiB + 4), "t", None, "text/plain", "", 0)
    assert not plugin.accepts(huge)
    small = B64Plugin(B64Plugin.Options(max_size=100))
    assert small.accepts(Payload(b"A" * 100, "t", None, "text/plain", "", 0))
    assert not small.accepts(Payload(b"A" * 104, "t", None, "text/plain", "", 0))
    # options given per call (dispatch meta) are honoured by scan too
    result = small.scan(Payload(b"QUJD" * 30, "t", None, "text/plain", "", 0), small.options)
    assert result.children == [] and result.data["skipped"] == "too-large"
