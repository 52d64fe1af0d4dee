"""Golden results (issue 14): every corpus file's whole scan document with the default settings, and
the dispatch map (which plugins the default dispatch runs on each fixture), against what is kept in
``tests/golden/<sha256>.json`` and ``tests/data/dispatch_map.json``. One scan of the corpus serves every
test here. A difference names the file and the JSON path; after a reviewed change, ``scripts/golden
--regen`` rewrites both (DEVELOPERS.md)."""

from __future__ import annotations

import json
from typing import Any

import magic
import pytest

from golden_docs import (DISPATCH_MAP, ENVIRONMENT, GOLDEN_DIR, TOOLS, differences, dispatch_map, environment,
                         normalise, scan_corpus)
from helpers import corpus_files, validate
from stoq_plugins.iocextract import IocextractPlugin

pytestmark = pytest.mark.tools(*TOOLS)
REGEN = "if the change is intended: scripts/golden --regen, and review `git diff tests/golden tests/data`"


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[str, Any]]:
    made = json.loads(ENVIRONMENT.read_text())
    if made != environment():  # libmagic's MIME types are its version's: another one gives other documents
        pytest.skip(f"goldens made with {made}, here {environment()}: regenerate them to compare")
    return scan_corpus()


def test_every_corpus_file_has_a_golden_and_no_golden_is_stale(docs: dict[str, dict[str, Any]]) -> None:
    kept = {p.stem for p in GOLDEN_DIR.glob("*.json") if p != ENVIRONMENT}
    assert kept == {doc["results"][0]["sha256"] for doc in docs.values()}, REGEN


@pytest.mark.parametrize("name", [p.name for p in corpus_files()])
def test_scan_document_equals_its_golden(docs: dict[str, dict[str, Any]], name: str) -> None:
    doc = docs[name]
    validate(doc)
    sha256 = doc["results"][0]["sha256"]
    golden = json.loads((GOLDEN_DIR / f"{sha256}.json").read_text())
    diff = list(differences(golden, normalise(doc)))
    assert not diff, f"{name} (tests/golden/{sha256}.json) differs:\n  " + "\n  ".join(diff[:30]) + f"\n{REGEN}"


def test_dispatch_map(docs: dict[str, dict[str, Any]]) -> None:
    """The default set's part of the map (``every_worker`` is checked by test_defaults.py, on its scan)."""
    kept = json.loads(DISPATCH_MAP.read_text())
    made = dispatch_map(docs, {})
    del kept["every_worker"]["roots"], made["every_worker"]["roots"]
    diff = list(differences(kept, made))
    assert not diff, "the default dispatch changed:\n  " + "\n  ".join(diff[:30]) + f"\n{REGEN}"


def test_routed_workers_run_on_exactly_the_payloads_they_fit(docs: dict[str, dict[str, Any]]) -> None:
    """Checked against the bytes and libmagic directly: peinfo on the PE roots (``MZ``, the PE signature
    at ``e_lfanew``), iocextract on the roots libmagic types as text (or mail, JSON, script...)."""
    typer = magic.Magic(mime=True)
    for path in corpus_files():
        data = path.read_bytes()
        root = docs[path.name]["results"][0]
        lfanew = int.from_bytes(data[0x3C:0x40], "little") if len(data) >= 0x40 else -1
        is_pe = data[:2] == b"MZ" and data[lfanew:lfanew + 4] == b"PE\0\0"
        assert ("peinfo" in root["workers"]) == is_pe, path.name
        mime = typer.from_buffer(data)
        textual = mime.startswith("text/") or mime in IocextractPlugin.mimes
        assert ("iocextract" in root["workers"]) == textual, (path.name, mime)
    # the text children of the readers and of archives get iocextract too
    eml = {r["filename"]: r for r in docs["test.eml"]["results"]}
    pdf = docs["test.pdf"]["results"]
    assert "iocextract" in eml["body_0.txt"]["workers"] and "iocextract" in eml["body_1.html"]["workers"]
    assert [r["extracted_by"] for r in pdf if "iocextract" in r["workers"]] == ["pdftext"]
