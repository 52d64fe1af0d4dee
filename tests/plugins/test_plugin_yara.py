"""The ``yara`` worker on corpus files and rules compiled by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from helpers import BENCH_RULES
from stoq.model import clean
from stoq_plugins._yararules import RuleError
from stoq_plugins.yara import DEFAULT_RULES, YaraPlugin

RULES200 = BENCH_RULES


def run(plugin: YaraPlugin, make_payload, content: bytes, **options):
    opts = plugin.Options(**{**plugin.options.model_dump(), **options})
    return plugin.scan(make_payload(content), opts)


@pytest.fixture
def plugin() -> YaraPlugin:
    p = YaraPlugin()
    p.setup()
    return p


def test_default_rules_are_bundled_and_compile(plugin: YaraPlugin) -> None:
    assert Path(DEFAULT_RULES).is_file()
    assert plugin.options.rules == DEFAULT_RULES
    assert (plugin.options.timeout, plugin.options.max_strings) == (30, 32)


def test_default_rules_on_corpus(plugin: YaraPlugin, corpus: Path, make_payload) -> None:
    def rules(name: str) -> list[str]:
        data = (corpus / name).read_bytes()
        return [m["rule"] for m in plugin.scan(make_payload(data), plugin.options).data["matches"]]

    assert rules("test.exe") == ["pe_file"]
    assert rules("test.elf") == ["elf_file"]
    assert rules("test.txt") == []
    assert rules("test_pe_object.doc") == ["embedded_pe"]


def test_matches_against_independent_offsets(tmp_path: Path, corpus: Path, make_payload) -> None:
    rule_file = tmp_path / "t.yar"
    rule_file.write_text(
        'rule words : text lorem { meta: author = "tests" score = 7 strong = true\n'
        '  strings: $a = "dolor" $b = "amet" condition: $a and $b }\n'
        'rule absent { strings: $z = "no such text anywhere" condition: $z }\n')
    plugin = YaraPlugin(YaraPlugin.Options(rules=str(rule_file), max_strings=100000))
    plugin.setup()
    data = (corpus / "test.txt").read_bytes()
    result = plugin.scan(make_payload(data), plugin.options)
    assert result.flags == []
    [match] = result.data["matches"]
    assert (match["rule"], match["namespace"], match["tags"]) == ("words", "default", ["text", "lorem"])
    assert match["meta"] == {"author": "tests", "score": 7, "strong": True}
    got = sorted((s["identifier"], s["offset"], s["data"]) for s in match["strings"])
    expected = sorted([("$a", m.start(), b"dolor") for m in re.finditer(b"dolor", data)]
                      + [("$b", m.start(), b"amet") for m in re.finditer(b"amet", data)])
    assert got == expected and len(expected) > 2
    assert data.find(b"dolor") == min(s["offset"] for s in match["strings"] if s["identifier"] == "$a")
    orjson.dumps(clean(result.data))  # JSON-safe under the text rule


def test_string_cap_and_data_cap(tmp_path: Path, make_payload) -> None:
    rule_file = tmp_path / "t.yar"
    rule_file.write_text('rule many { strings: $x = "ab" $long = /Q{100}/ condition: any of them }')
    plugin = YaraPlugin(YaraPlugin.Options(rules=str(rule_file), max_strings=5))
    plugin.setup()
    data = b"ab-" * 20 + b"Q" * 100
    result = plugin.scan(make_payload(data), plugin.options)
    assert result.flags == ["limit:yara-strings"]
    assert [s["offset"] for s in result.data["matches"][0]["strings"]] == [0, 3, 6, 9, 12]

    big = run(plugin, make_payload, data, max_strings=1000)
    assert big.flags == []
    strings = big.data["matches"][0]["strings"]
    assert len(strings) == 21
    [long] = [s for s in strings if s["identifier"] == "$long"]
    assert long["offset"] == data.find(b"Q") and long["data"] == b"Q" * 64  # matched data capped at 64 bytes


def test_rules_option_per_scan_compiles_other_file(tmp_path: Path, make_payload) -> None:
    other = tmp_path / "other.yar"
    other.write_text("rule always { condition: true }")
    plugin = YaraPlugin()
    plugin.setup()
    result = run(plugin, make_payload, b"anything", rules=str(other))
    assert [m["rule"] for m in result.data["matches"]] == ["always"]


def test_rules200_loads_and_matches_as_computed(corpus: Path, make_payload) -> None:
    plugin = YaraPlugin(YaraPlugin.Options(rules=str(RULES200)))
    plugin.setup()
    for name in ("test.exe", "test_xor.exe", "test.txt"):
        data = (corpus / name).read_bytes()
        expected = {f"r{i}" for i in range(200)
                    if b"token%d" % i in data or bytes([0x4D, 0x5A, 0x90, 0x00, i % 10]) in data}
        if data[:2] == b"MZ":
            expected.add("pe")
        if any(bytes(c ^ key for c in b"This program") in data for key in range(1, 256)):
            expected.add("this_prog")
        result = plugin.scan(make_payload(data), plugin.options)
        assert {m["rule"] for m in result.data["matches"]} == expected, name


def test_bad_rule_file_raises(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yar"
    broken.write_text("rule broken { condition: }")
    with pytest.raises(RuleError, match=r"broken\.yar line 1: syntax error"):
        YaraPlugin(YaraPlugin.Options(rules=str(broken))).setup()


def test_yara_timeout_is_a_flag(tmp_path: Path, make_payload) -> None:
    slow = tmp_path / "slow.yar"
    slow.write_text("rule slow { condition: for all i in (0..filesize) : "
                    "(for all j in (0..filesize) : (uint8(i) == uint8(j) or true)) }")
    plugin = YaraPlugin(YaraPlugin.Options(rules=str(slow), timeout=1))
    plugin.setup()
    result = plugin.scan(make_payload(b"\x00" * 200_000), plugin.options)
    assert (result.data, result.flags) == ({"matches": [], "timeout": 1}, ["limit:yara-time"])


def test_too_many_matches_is_a_flag(tmp_path: Path, make_payload) -> None:
    rule_file = tmp_path / "t.yar"
    rule_file.write_text('rule a { strings: $a = "aa" condition: $a }')
    plugin = YaraPlugin(YaraPlugin.Options(rules=str(rule_file)))
    plugin.setup()
    result = plugin.scan(make_payload(b"a" * 1_100_000), plugin.options)  # YARA records at most 1,000,000
    assert result.flags == ["limit:yara-matches", "limit:yara-strings"]
    assert [s["offset"] for s in result.data["matches"][0]["strings"]] == list(range(32))
