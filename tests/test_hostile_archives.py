"""Hostile archives through the whole engine: nesting past the depth limit, self-similar (42.zip-like)
archives stopped by duplicate detection, and a decompression bomb that stays under 1 GiB of memory."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_zip as zipped
from helpers import validate
from stoq.config import load_settings
from stoq.engine import Engine


def engine(tmp_path: Path, **overrides: object) -> Engine:
    return Engine(load_settings(env={"STOQ_ARCHIVE": str(tmp_path / "archive")}, overrides=overrides))


def test_nesting_past_the_depth_limit_is_cut_and_flagged(tmp_path: Path) -> None:
    data = b"the innermost file"
    for level in range(12):
        data = zipped({f"level{level}.bin": data})
    doc = engine(tmp_path, max_depth=8).scan(data, "nested.zip", {})
    validate(doc)
    assert [p["depth"] for p in doc["results"]] == list(range(9))
    assert [p["flags"] for p in doc["results"]][:-1] == [[]] * 8
    assert doc["results"][-1]["flags"] == ["limit:depth"]  # still a zip, not opened


def test_self_similar_archive_is_stopped_by_duplicates(tmp_path: Path) -> None:
    leaf = zipped({f"{i}.txt": b"not base64, not anything. " * 400 for i in range(16)})  # 16 identical members
    middle = zipped({f"{i}.zip": leaf for i in range(16)})  # 16 identical archives
    top = zipped({f"{i}.zip": middle for i in range(16)})
    doc = engine(tmp_path).scan(top, "42.zip", {})
    validate(doc)
    by_depth: dict[int, list[dict[str, object]]] = {}
    for p in doc["results"]:
        by_depth.setdefault(int(p["depth"]), []).append(p)  # type: ignore[arg-type]
    # each level: 16 entries, of which only the first is analysed; the rest point to it
    assert [len(by_depth[d]) for d in (1, 2, 3)] == [16, 16, 16]
    for depth in (1, 2, 3):
        first, *rest = by_depth[depth]
        assert first["duplicate_of"] is None and first["parent_id"] == by_depth[depth - 1][0]["payload_id"] \
            if depth > 1 else first["duplicate_of"] is None
        assert {r["duplicate_of"] for r in rest} == {first["payload_id"]}
    assert doc["payloads"] == 1 + 16 * 3
    assert by_depth[3][0]["sha256"] == hashlib.sha256(b"not base64, not anything. " * 400).hexdigest()


BOMB = """
import gzip, json, resource, sys
from stoq.config import load_settings
from stoq.engine import Engine
data = open(sys.argv[1], "rb").read()
env = {"STOQ_ARCHIVE": sys.argv[2], "STOQ_ARCHIVER": "none", "STOQ_DECOMPRESS__BOMB_RATIO": sys.argv[3]}
engine = Engine(load_settings(env=env))
doc = engine.scan(data, "bomb.gz", {})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"flags": doc["results"][0]["flags"], "payloads": doc["payloads"], "peak_kib": peak}))
"""


@pytest.mark.parametrize("bomb_ratio,flag", [("1000", "ratio:bomb"), ("0", "limit:member-bytes")])
def test_a_gzip_bomb_stays_under_the_caps_and_1_gib(tmp_path: Path, bomb_ratio: str, flag: str) -> None:
    """320 MiB of zeros (1028:1): abandoned by the bomb rule past its first 8 MiB, or, with the rule
    off, at the 256 MiB member cap."""
    bomb = tmp_path / "bomb.gz"
    with gzip.open(bomb, "wb", compresslevel=6) as handle:
        chunk = b"\0" * (1 << 24)
        for _ in range(20):
            handle.write(chunk)
    out = subprocess.run([sys.executable, "-c", BOMB, str(bomb), str(tmp_path / "archive"), bomb_ratio],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    result = json.loads(out)
    assert flag in result["flags"] and "limit:total-bytes" not in result["flags"]
    assert result["payloads"] == 1  # the oversized member is not kept
    assert result["peak_kib"] < 1024 * 1024, result


def nested_leaves(fanout: int, leaf_size: int) -> tuple[bytes, list[bytes], list[bytes]]:
    """A zip of ``fanout`` zips of ``fanout`` zips of ``fanout`` distinct, compressible leaves of
    ``leaf_size`` bytes; returns it, its middle zips and its inner zips."""
    inner, middle = [], []
    for m in range(fanout):
        zips = []
        for z in range(fanout):
            leaves = {}
            for leaf in range(fanout):
                seed = hashlib.sha256(f"{m}.{z}.{leaf}".encode()).hexdigest().encode()
                leaves[f"{leaf}.txt"] = (seed * (leaf_size // len(seed) + 1))[:leaf_size]
            zips.append(zipped(leaves))
        inner.extend(zips)
        middle.append(zipped({f"{z}.zip": data for z, data in enumerate(zips)}))
    return zipped({f"{m}.zip": data for m, data in enumerate(middle)}), middle, inner


def expected_inner(top_middle_inner: tuple[bytes, list[bytes], list[bytes]], max_bytes: int) -> list[int]:
    """What each inner zip of ``nested_leaves`` may decompress: its wave (the 64 inner zips) begins with
    what the middle and inner zips (admitted children) left of ``max_bytes``; each gets the larger of
    an equal part and a part in proportion to its size, and reads one byte past it to see it passed."""
    _, middle, inner = top_middle_inner
    left = max_bytes - sum(map(len, middle)) - sum(map(len, inner))
    return [max(left // len(inner), left * len(z) // sum(map(len, inner))) + 1 for z in inner]


def test_bytes_decompressed_and_dropped_count_against_the_scan(tmp_path: Path) -> None:
    """Issue 12: nested zips whose distinct leaves are all dropped at the member cap. Every byte
    decompressed counts against max_bytes, so the scan stops extracting once it is spent (limit:bytes),
    instead of inflating every leaf of every inner zip (only max_scan_seconds stopped it)."""
    leaf_size, max_bytes = 100 * 1024, 4 << 20
    nested = nested_leaves(8, leaf_size)
    eng = Engine(load_settings(env={"STOQ_ARCHIVE": str(tmp_path / "archive")}, overrides={"max_bytes": max_bytes},
                               plugin_options={"decompress": {"max_member_bytes": 64 * 1024}}))
    doc = eng.scan(nested[0], "nested.zip", {})
    validate(doc)
    assert [r["depth"] for r in doc["results"]] == [0] + [1] * 8 + [2] * 64  # no leaf is kept
    inner = doc["results"][9:]
    assert [r["workers"]["decompress"]["decompressed"] for r in inner] == expected_inner(nested, max_bytes)
    assert all("limit:bytes" in r["flags"] and "limit:member-bytes" not in r["flags"] for r in inner)
    # without the budget: 8 leaves of 100 KiB inflated in each of the 64 inner zips, 50 MiB
    assert sum(r["workers"]["decompress"]["decompressed"] for r in doc["results"]) < 2 * max_bytes
