"""Hostile input is the normal case: damaged variants of every corpus file (3 truncations and 10
bit-flip variants each, fixed seed) all get a valid document, and the pool's workers survive."""

from __future__ import annotations

import random
import resource
from pathlib import Path

import orjson
import pytest

from helpers import corpus_files, validate
from stoq.config import load_settings
from stoq.embedded import scan_files
from stoq.engine import Engine


def variants(tmp: Path) -> list[Path]:
    rng = random.Random(20261127)
    out = []
    for path in corpus_files():
        data = path.read_bytes()
        if not data:
            continue
        for i, cut in enumerate((len(data) // 4, len(data) // 2, len(data) - 1)):
            out.append(tmp / f"{path.name}.cut{i}")
            out[-1].write_bytes(data[:cut])
        for i in range(10):
            flipped = bytearray(data)
            for _ in range(1 + i):  # 1 to 10 flipped bits
                pos = rng.randrange(len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            out.append(tmp / f"{path.name}.flip{i}")
            out[-1].write_bytes(bytes(flipped))
    return out


@pytest.mark.timeout(600)
def test_damaged_corpus_gets_valid_documents_and_workers_survive(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    files = variants(damaged)
    assert len(files) == 13 * (len(corpus_files()) - 1)  # test.empty has nothing to damage
    engine = Engine(load_settings(env={"STOQ_ARCHIVE": str(tmp_path / "archive")},
                                  overrides={"workers": "yara,peinfo", "max_depth": 3, "timeout": 30}))
    outcomes = list(scan_files(engine, files, 2))
    assert [o.path for o in outcomes] == files
    gave_up = []
    for outcome in outcomes:
        assert outcome.document is not None, outcome.error
        doc = orjson.loads(outcome.document)
        validate(doc)
        assert doc["results"][0]["filename"] == outcome.path.name
        if "crash:gave-up" in doc["results"][0]["flags"]:
            gave_up.append(outcome.path.name)
    assert gave_up == []  # no damaged file kills its worker for good
    # the children of all those workers stayed well under 1 GiB each
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 1024 * 1024, f"a worker peaked at {peak_kib} KiB"
    # nothing was written outside the archive and the damaged inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "damaged"]
