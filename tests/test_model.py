"""The text rule: every value a plugin or an input contributes becomes JSON that PostgreSQL JSONB takes."""

from __future__ import annotations

import datetime
import json

import pytest

from stoq.model import clean, json_safe, text

CASES = [
    ({"a": b"\x00\xff"}, {"a": "\\x00\\xff"}),
    ({"b": 2**64 - 1, "c": 2**64, "d": -(2**63) - 1}, {"b": 2**64 - 1, "c": "18446744073709551616", "d": "-9223372036854775809"}),
    ({1: "x", b"k\xff": 1}, {"1": "x", "k\\xff": 1}),
    ({"s": {3, 1}, "t": (1, 2)}, {"s": [1, 3], "t": [1, 2]}),
    ({"nul": "ok\x00", "nan": float("nan"), "inf": float("-inf")}, {"nul": "ok\\x00", "nan": None, "inf": None}),
    ({"surrogate": "caf\udce9"}, {"surrogate": "caf\\xe9"}),
    ({"when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))},
     {"when": "2024-01-02T01:04:05Z"}),
    ({"ok": ["é", 1.5, True, None]}, {"ok": ["é", 1.5, True, None]}),
]


@pytest.mark.parametrize("value, expected", CASES)
def test_clean_and_its_fast_path_agree_with_the_rule(value: object, expected: object) -> None:
    assert clean(value) == expected
    assert json_safe(value) == expected
    raw = json.dumps(expected, ensure_ascii=False)
    raw.encode("utf-8")  # valid UTF-8
    assert "\\u0000" not in raw and "\x00" not in raw


def test_text_rule_on_invalid_utf8() -> None:
    assert text(b"MZ\x90\x00\x03") == "MZ\\x90\\x00\x03"  # control characters other than NUL stay
    assert text("plain") == "plain"
    assert text(b"\xe2\x82\xac") == "€"  # valid UTF-8 is kept


def test_new_ids_are_uuid7_and_time_ordered() -> None:
    import time
    import uuid

    from stoq.model import new_id

    first = new_id()
    time.sleep(0.002)
    ids = [first] + [new_id() for _ in range(100)]
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert ids[1] > ids[0]  # a later millisecond sorts later
    assert abs((uuid.UUID(first).int >> 80) - time.time_ns() // 1_000_000) < 5000
    assert len(set(ids)) == len(ids)
