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


def test_lone_surrogates_of_any_kind_follow_the_text_rule() -> None:
    # from surrogateescape (U+DC80-U+DCFF): the byte; any other: its UTF-8-style bytes, written \xNN
    assert text("a\udce9b") == "a\\xe9b"
    assert text("a\ud800b\udfff") == "a\\xed\\xa0\\x80b\\xed\\xbf\\xbf"
    assert text("\udce9\ud83d") == "\\xe9\\xed\\xa0\\xbd"
    assert json_safe({"\ud800": ["\ud800"]}) == {"\\xed\\xa0\\x80": ["\\xed\\xa0\\x80"]}


def test_json_safe_refuses_nesting_deeper_than_the_documented_limit() -> None:
    from stoq.model import MAX_NESTING

    def nested(levels: int) -> list[object]:
        outer: list[object] = []
        inner = outer
        for _ in range(levels - 1):
            inner.append([])
            inner = inner[0]  # type: ignore[assignment]
        return outer

    assert json_safe(nested(MAX_NESTING)) == nested(MAX_NESTING)
    assert json_safe({"k": {b"bytes", 1}, "v": nested(MAX_NESTING - 1)})["k"] == ["bytes", 1]  # through clean(): sets sorted by their JSON
    for value in (nested(MAX_NESTING + 1), {"k": {1}, "v": nested(MAX_NESTING)}, nested(5000)):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_NESTING} levels"):
            json_safe(value)


def test_the_contract_check_is_on_in_the_tests_and_refuses_a_document_off_contract() -> None:
    import os
    import subprocess
    import sys

    from stoq import model
    from stoq.model import PayloadRecord, document

    schema = os.environ["STOQDEV_CHECK_DOCUMENTS"]
    assert model.CHECK_DOCUMENTS == schema and schema.endswith("docs/scan-document.schema.json")
    out = subprocess.run([sys.executable, "-c", "import stoq.model; print(stoq.model.CHECK_DOCUMENTS)"],
                         capture_output=True, check=True).stdout
    assert out.decode() == schema + "\n"  # every stoq or celery process the tests start checks what it assembles
    record = PayloadRecord(payload_id="p", parent_id=None, depth=0, filename="f", extracted_by=None, meta={},
                           size=0, md5="0" * 32, sha1="0" * 40, sha256="0" * 64, sha512="0" * 128, mime="x/y")
    document("s", "2024-05-01T00:00:00Z", {}, [record], [])
    with pytest.raises(ValueError, match="date"):
        document("s", "2024-05-01T00:00:00+02:00", {}, [record], [])
    record.depth = 1  # a root with a depth
    with pytest.raises(ValueError, match="parent missing, later or inconsistent with depth"):
        document("s", "2024-05-01T00:00:00Z", {}, [record], [])
