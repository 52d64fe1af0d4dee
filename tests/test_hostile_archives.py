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
