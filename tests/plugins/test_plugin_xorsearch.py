"""The ``xorsearch`` worker on the corpus PE encoded here, in plain Python, with XOR, ROL and ADD keys:
exact offsets and keys, and the decoded child equal to the original PE."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pydantic
import pytest

from stoq.plugin import Payload
from stoq_plugins.xorsearch import XorsearchPlugin

PREFIX = b"junk before the encoded executable\r\n" * 3


def encoded(content: bytes, method: str, key: int) -> bytes:
    if method == "xor":
        return bytes(b ^ key for b in content)
    if method == "add":
        return bytes((b + key) % 256 for b in content)
    return bytes(((b << key) | (b >> (8 - key))) & 0xFF for b in content)


def offsets(content: bytes, needle: bytes) -> list[int]:
    found, at = [], content.find(needle)
    while at >= 0:
        found.append(at)
        at = content.find(needle, at + 1)
    return found


@pytest.fixture
def pe(corpus: Path) -> bytes:
    return (corpus / "test.exe").read_bytes()


def run(payload: Payload, **options: object) -> tuple[dict, list, list[str]]:
    result = XorsearchPlugin().scan(payload, XorsearchPlugin.Options(**options))
    return result.data, result.children, result.flags


@pytest.mark.parametrize(("method", "key"), [("xor", 1), ("xor", 0x5A), ("xor", 0xFF), ("add", 1), ("add", 200),
                                             *[("rol", bits) for bits in range(1, 8)]])
def test_an_encoded_pe_is_found_and_decoded(method: str, key: int, pe: bytes,
                                            make_payload: Callable[..., Payload]) -> None:
    data, children, flags = run(make_payload(PREFIX + encoded(pe, method, key)))
    assert data["executables"] == [{"method": method, "key": key, "offset": len(PREFIX)}]
    expected = [{"method": method, "key": key, "offset": len(PREFIX) + at, "string": s}
                for s in ("This program", "http") for at in offsets(pe, s.encode())]
    assert data["hits"] == sorted(expected, key=lambda h: h["offset"]) and expected
    assert [hashlib.sha256(c.content).hexdigest() for c in children] == [hashlib.sha256(pe).hexdigest()]
    assert children[0].meta == {"method": method, "key": key, "offset": len(PREFIX)}
    assert flags == [] and data["examined"] == len(PREFIX) + len(pe)


def test_plain_text_only_when_asked(pe: bytes, make_payload: Callable[..., Payload]) -> None:
    data, children, _ = run(make_payload(pe))
    assert data["hits"] == [] and data["executables"] == [] and children == []
    data, children, _ = run(make_payload(pe), plain=True)
    assert data["executables"] == [{"method": "xor", "key": 0, "offset": 0}]
    assert [h["offset"] for h in data["hits"] if h["string"] == "This program"] == offsets(pe, b"This program")
    assert {(h["method"], h["key"]) for h in data["hits"]} == {("xor", 0)}


def test_configured_strings(make_payload: Callable[..., Payload]) -> None:
    content = b"\x00" * 10 + encoded(b"powershell -enc AAAA", "add", 7) + b"\x00" * 10 + encoded(b"cmd.exe", "rol", 5)
    data, _, _ = run(make_payload(content), strings=["powershell", "cmd.exe"])
    assert data["hits"] == [{"method": "add", "key": 7, "offset": 10, "string": "powershell"},
                            {"method": "rol", "key": 5, "offset": 40, "string": "cmd.exe"}]


def test_caps_are_flagged(pe: bytes, make_payload: Callable[..., Payload]) -> None:
    three = b"".join(PREFIX + encoded(pe, "xor", k) for k in (3, 4, 5))
    data, children, flags = run(make_payload(three), max_children=2)
    step = len(PREFIX) + len(pe)
    assert data["executables"] == [{"method": "xor", "key": k, "offset": len(PREFIX) + i * step}
                                   for i, k in enumerate((3, 4, 5))]
    assert [c.meta["key"] for c in children] == [3, 4]
    assert children[1].content == pe + encoded(PREFIX + encoded(pe, "xor", 5), "xor", 4)  # decoded to the end
    assert len(data["hits"]) == 3 and flags == ["limit:xorsearch-children"]
    data, children, flags = run(make_payload(three), max_hits=2)
    assert [h["key"] for h in data["hits"]] == [3, 4] and [e["key"] for e in data["executables"]] == [3, 4]
    assert flags == ["limit:xorsearch-hits"]
    data, children, flags = run(make_payload(three), max_hits=1, strings=["not in there"])
    assert data["executables"] == [{"method": "xor", "key": 3, "offset": len(PREFIX)}] and data["hits"] == []
    assert len(children) == 1 and flags == ["limit:xorsearch-hits"]
    data, children, flags = run(make_payload(three), max_size=step)
    assert data["examined"] == step and [c.content for c in children] == [pe] and flags == ["limit:xorsearch-size"]


def test_no_child_is_decoded_past_the_scans_byte_budget(pe: bytes) -> None:
    two = b"".join(PREFIX + encoded(pe, "xor", k) for k in (3, 4))
    step = len(PREFIX) + len(pe)

    def make(left: int) -> Payload:
        return Payload(content=two, payload_id="t", filename=None, mime="application/octet-stream",
                       sha256=hashlib.sha256(two).hexdigest(), depth=0, bytes_left=left)

    result = XorsearchPlugin().scan(make(2 * step - len(PREFIX) + len(pe)), XorsearchPlugin.Options())
    assert [c.meta["key"] for c in result.children] == [3, 4] and result.flags == []
    result = XorsearchPlugin().scan(make(2 * step - len(PREFIX) + len(pe) - 1), XorsearchPlugin.Options())
    assert [c.meta["key"] for c in result.children] == [3] and result.flags == ["limit:bytes"]
    assert len(result.data["executables"]) == 2


def test_mz_pairs_everywhere_cost_a_window_at_a_time(make_payload: Callable[..., Payload],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Hostile data that is an XOR-encoded `MZ` pair at every even offset (each with a PE header behind):
    the candidates are taken a window at a time and the search stops past `max_hits` headers."""
    from stoq_plugins import _xorsearch

    monkeypatch.setattr(_xorsearch, "WINDOW", 64)
    header = bytearray(b"MZ" * 32)
    header[0x3C:0x40] = (0x40).to_bytes(4, "little")
    one = bytes(header) + b"PE\0\0"  # 68 bytes: MZ at 0 whose e_lfanew (0x40) leads to PE\0\0
    content = encoded(one, "xor", 7) * 50
    data, children, flags = run(make_payload(content), max_hits=5, max_children=0, strings=["not in there"])
    assert data["executables"] == [{"method": "xor", "key": 7, "offset": i * 68} for i in range(5)]
    assert flags == ["limit:xorsearch-hits", "limit:xorsearch-children"] and children == []


@pytest.mark.parametrize("content", [b"", b"M", b"MZ", encoded(b"MZ" + b"\x00" * 0x3A + b"\xff\xff\xff\x7f", "xor", 9)])
def test_short_and_truncated_headers(content: bytes, make_payload: Callable[..., Payload]) -> None:
    data, children, flags = run(make_payload(content))
    assert data == {"examined": len(content), "hits": [], "executables": []} and children == [] and flags == []


def test_short_strings_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="fewer than 3 bytes"):
        XorsearchPlugin.Options(strings=["MZ"])
