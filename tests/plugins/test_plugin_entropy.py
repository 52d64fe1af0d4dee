"""The ``entropy`` worker against buffers of known entropy and a plain-Python count (``collections.Counter``
and ``math.log2``, no numpy) of every corpus file and of its blocks."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from stoq.plugin import Payload
from stoq_plugins.entropy import EntropyPlugin

from helpers import corpus_files


def reference(data: bytes) -> float:
    return -sum(n / len(data) * math.log2(n / len(data)) for n in Counter(data).values()) if data else 0.0


def run(payload: Payload, **options: int) -> tuple[dict, list[str]]:
    result = EntropyPlugin().scan(payload, EntropyPlugin.Options(**options))
    return result.data, result.flags


@pytest.mark.parametrize(("content", "expected"), [
    (bytes(range(256)) * 64, 8.0),  # 256 equiprobable values
    (b"A" * 10_000, 0.0),  # one value
    (b"\x00\xff" * 3000, 1.0),  # two equiprobable values
    (bytes(range(16)) * 1000, 4.0),
])
def test_known_entropies_are_exact(content: bytes, expected: float, make_payload: Callable[..., Payload]) -> None:
    data, flags = run(make_payload(content), block_size=1024)
    assert data["entropy"] == expected and flags == []
    full, tail = divmod(len(content), 1024)
    assert data["blocks_total"] == full + (1 if tail else 0) == len(data["blocks"])


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus_files_match_a_plain_count(path: Path, make_payload: Callable[..., Payload]) -> None:
    content = path.read_bytes()
    data, flags = run(make_payload(content), block_size=4096, max_blocks=10_000)
    assert data["entropy"] == pytest.approx(reference(content), abs=1e-6)
    blocks = [content[i:i + 4096] for i in range(0, len(content), 4096)]
    assert data["blocks"] == pytest.approx([reference(b) for b in blocks], abs=1e-6)
    assert data["examined"] == len(content) and data["blocks_total"] == len(blocks) and flags == []
    if blocks:
        best = max(range(len(blocks)), key=lambda i: round(reference(blocks[i]), 6))
        assert data["highest"] == {"offset": best * 4096, "size": len(blocks[best]),
                                   "entropy": pytest.approx(reference(blocks[best]), abs=1e-6)}
    else:
        assert data["highest"] is None and data["entropy"] == 0.0


def test_the_random_region_of_a_file_is_the_highest(make_payload: Callable[..., Payload]) -> None:
    noise = os.urandom(4096)
    content = b"\x00" * 40_960 + noise + b"text " * 2000
    data, _ = run(make_payload(content), block_size=4096)
    assert data["highest"] == {"offset": 40_960, "size": 4096, "entropy": pytest.approx(reference(noise), abs=1e-6)}
    assert data["blocks"][:10] == [0.0] * 10


def test_block_and_size_caps_are_flagged(make_payload: Callable[..., Payload]) -> None:
    content = bytes(range(256)) * 40 + b"\x00" * 1000  # 11 240 bytes
    data, flags = run(make_payload(content), block_size=1024, max_blocks=3)
    assert data["blocks"] == [8.0, 8.0, 8.0] and data["blocks_total"] == 11 and flags == ["limit:entropy-blocks"]
    assert data["highest"]["offset"] == 0
    data, flags = run(make_payload(content), block_size=1024, max_size=10_240)
    assert data["examined"] == 10_240 and data["entropy"] == 8.0 and data["blocks_total"] == 10
    assert flags == ["limit:entropy-size"]
    data, flags = run(make_payload(content), block_size=1024, max_blocks=11, max_size=len(content))
    assert flags == [] and data["entropy"] == pytest.approx(reference(content), abs=1e-6)


def test_blocks_across_numpy_chunks(make_payload: Callable[..., Payload], monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks counted over several numpy passes (a small chunk) are the same as the plain count's."""
    from stoq_plugins import _entropy

    monkeypatch.setattr(_entropy, "ROWS", 2)  # two blocks per pass, then a last pass
    content = os.urandom(5000) + b"ab" * 3000
    data, _ = run(make_payload(content), block_size=1000)
    blocks = [content[i:i + 1000] for i in range(0, len(content), 1000)]
    assert data["entropy"] == pytest.approx(reference(content), abs=1e-6)
    assert data["blocks"] == pytest.approx([reference(b) for b in blocks], abs=1e-6)
