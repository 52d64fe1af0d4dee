"""The ``xor`` decoder: keys from options, dispatch rule names and known plaintexts, against
``bytes(b ^ k for b in data)``."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from stoq.plugin import Payload, Result
from stoq_plugins._decode import find_xor_key
from stoq_plugins.xor import XorPlugin

MiB = 1 << 20
DOS = b"This program cannot be run in DOS mode"


def xored(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % len(key)] for i, b in enumerate(data))


def scan(content: bytes, rules: tuple[str, ...] = (), **options) -> Result:
    plugin = XorPlugin(XorPlugin.Options(**options))
    plugin.setup()
    payload = Payload(content, "t", None, "application/octet-stream", hashlib.sha256(content).hexdigest(), 0,
                      dispatch_rules=rules)
    assert plugin.accepts(payload)
    return plugin.scan(payload, plugin.options)


@pytest.mark.parametrize("key", [1, 0x5A, 0xFF])
def test_key_found_from_the_dos_stub(corpus: Path, key: int) -> None:
    raw = (corpus / "test.exe").read_bytes()
    result = scan(bytes(b ^ key for b in raw))
    [child] = result.children
    assert child.content == raw
    assert hashlib.sha256(child.content).hexdigest() == hashlib.sha256(raw).hexdigest()
    info = {"key": f"0x{key:02x}", "key_source": "plaintext", "plaintext_offset": raw.index(DOS)}
    assert result.data == {"decoded_size": len(raw), **info, "skipped": None}
    assert child.meta == {"decoder": "xor", **info}


def test_embedded_pe_earliest_plaintext_wins(corpus: Path) -> None:
    raw = (corpus / "test.exe").read_bytes()
    noise = random.Random(3).randbytes(5000)
    data = noise + xored(raw, b"\x21") + xored(raw, b"\x42")
    result = scan(data)
    assert result.data["key"] == "0x21" and result.data["plaintext_offset"] == 5000 + raw.index(DOS)
    assert result.children[0].content == xored(data, b"\x21")
    assert result.children[0].content[5000:5000 + len(raw)] == raw


def test_custom_plaintexts(corpus: Path) -> None:
    text = (corpus / "test.txt").read_bytes()
    encoded = xored(text, b"\x7e")
    assert scan(encoded).data["skipped"] == "no-key"
    result = scan(encoded, plaintexts=["nothing here", "Lorem ipsum"])
    assert result.children[0].content == text and result.data["plaintext_offset"] == text.index(b"Lorem ipsum")


@pytest.mark.parametrize("option,key", [(90, b"\x5a"), ("90", b"\x5a"), ("0x5a", b"\x5a"),
                                        ("0x4142", b"AB"), ("0xdeadbeef01", bytes.fromhex("deadbeef01"))])
def test_key_option(corpus: Path, option: int | str, key: bytes) -> None:
    raw = (corpus / "test.txt").read_bytes()
    result = scan(xored(raw, key), key=option)
    assert result.children[0].content == raw
    assert result.data["key"] == "0x" + key.hex() and result.data["key_source"] == "option"
    assert result.data["plaintext_offset"] is None


def test_key_from_dispatch_rule_name(corpus: Path) -> None:
    raw = (corpus / "test.exe").read_bytes()
    data = xored(raw, b"\x20")
    result = scan(data, rules=("some_rule", "xor_This_program_key_32"))
    assert result.children[0].content == raw and result.data["key_source"] == "rule"
    wrong = scan(data, rules=("xor_This_program_key_32",), key=7)  # the option wins over the rule name
    assert wrong.children[0].content == xored(data, b"\x07") and wrong.data["key_source"] == "option"
    beyond = scan(data, rules=("xor_This_program_key_300",))  # not a byte: found from the stub instead
    assert beyond.data["key_source"] == "plaintext" and beyond.children[0].content == raw


@pytest.mark.parametrize("bad", [256, -1, "256", "0x", "0xZZ", "abc", "0x123"])
def test_bad_keys_are_refused(bad: int | str) -> None:
    with pytest.raises(ValidationError):
        XorPlugin.Options(key=bad)


def test_garbage_unchanged_and_min_size() -> None:
    garbage = random.Random(5).randbytes(4096)
    assert scan(garbage).children == []
    assert scan(garbage).data == {"decoded_size": None, "key": None, "key_source": None, "plaintext_offset": None,
                                  "skipped": "no-key"}
    assert scan(garbage, key=0).data["skipped"] == "unchanged"
    assert scan(b"0123456789", key=1).data["skipped"] == "too-small"
    assert scan(b"0123456789", key=1, min_size=10).children[0].content == xored(b"0123456789", b"\x01")
    assert scan(b"", key=1).data["skipped"] == "empty"


def test_huge_input_is_declined() -> None:
    assert not XorPlugin().accepts(Payload(b"\x00" * (64 * MiB + 1), "t", None, "x", "", 0))
    small = XorPlugin(XorPlugin.Options(max_size=64))
    assert not small.accepts(Payload(b"\x00" * 65, "t", None, "x", "", 0))
    assert small.scan(Payload(b"\x00" * 65, "t", None, "x", "", 0), small.options).data["skipped"] == "too-large"


def brute_force(data: bytes, plain: bytes) -> tuple[int, int] | None:
    """(key, offset) of the earliest occurrence of ``plain`` XOR k, k in 1..255, searched key by key."""
    hits = [(data.find(bytes(b ^ k for b in plain)), k) for k in range(1, 256)]
    found = [(offset, k) for offset, k in hits if offset >= 0]
    return (min(found)[1], min(found)[0]) if found else None


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_key_search_matches_brute_force_across_chunks(chunk: int) -> None:
    rng = random.Random(11)
    plain = b"This program must be run under Win32"
    for _ in range(20):
        offset, key = rng.randrange(0, 300), rng.randrange(1, 256)
        data = plain + rng.randbytes(offset) + xored(plain, bytes([key])) + rng.randbytes(50)  # clear text first
        assert brute_force(data, plain) == (key, len(plain) + offset)
        assert find_xor_key(data, [b"absent plaintext", plain], chunk) == (key, len(plain) + offset, plain)
    assert find_xor_key(plain * 3, [plain], chunk) is None  # only the clear text: key 0 is no key


def test_borland_stub_is_a_default_plaintext() -> None:
    stub = b"MZP\x00" + b"\x00" * 60 + b"This program must be run under Win32\r\n$" + bytes(range(256)) * 2
    result = scan(xored(stub, b"\x99"))
    assert result.children[0].content == stub and result.data["plaintext_offset"] == 64
