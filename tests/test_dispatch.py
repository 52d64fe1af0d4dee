"""Wiring as data: with the bundled dispatch rules and MIME routing, each corpus sample reaches the
plugins that should open it, and the engine analyses what they extract."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from helpers import CORPUS, validate
from stoq.config import load_settings
from stoq.engine import Engine

#: Sample -> the plugins that must run on it as a root payload (no --workers given).
ROUTES = {
    "test.zip": {"decompress", "trailer"},
    "test.gz": {"decompress"},
    "test.tar": {"decompress"},
    "test.docx": {"decompress"},
    "test.b64": {"b64"},
    "test_pe_object.doc": {"pe", "ole"},
    "test.xls": {"ole"},
    "test.pdf": {"pdftext", "trailer"},
    "test.eml": {"email"},
    "test.txt.gpg": {"gpg"},
    "test.exe": {"trailer"},  # (an overlay would be carved; debloat declines a PE under min_bloat)
    "test.txt": set(),
    "test.jpg": {"trailer"},
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    archive = tmp_path_factory.mktemp("archive")
    return Engine(load_settings(env={"STOQ_ARCHIVE": str(archive)}, overrides={"max_depth": 2}))


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_default_routing(engine: Engine, name: str) -> None:
    data = (CORPUS / name).read_bytes()
    doc = engine.scan(data, name, {"path": name})
    validate(doc)
    assert set(doc["results"][0]["workers"]) == ROUTES[name]
    assert doc["errors"] == []


def test_base64_text_is_decoded_by_default(engine: Engine) -> None:
    text = (CORPUS / "test.b64").read_bytes()
    expected = hashlib.sha256(base64.b64decode(b"".join(text.split()))).hexdigest()
    doc = engine.scan(text, "test.b64", {})
    children = [p for p in doc["results"] if p["extracted_by"] == "b64"]
    assert [c["sha256"] for c in children] == [expected]


def test_embedded_executable_is_carved_from_the_document(engine: Engine) -> None:
    doc = engine.scan((CORPUS / "test_pe_object.doc").read_bytes(), "test_pe_object.doc", {})
    root = doc["results"][0]["payload_id"]
    (child,) = [p for p in doc["results"] if p["extracted_by"] == "pe" and p["parent_id"] == root]
    assert child["mime"] == "application/vnd.microsoft.portable-executable"
    assert child["meta"]["offset"] == 19629 and child["size"] == 12288
    # the ole carver finds the same executable in the Ole10Native stream: one analysis, one duplicate
    from_ole = [p for p in doc["results"] if p["extracted_by"] == "ole" and p["sha256"] == child["sha256"]]
    assert len(from_ole) == 1 and (from_ole[0]["duplicate_of"] is None) != (child["duplicate_of"] is None)


def test_the_key_yara_reports_for_an_xor_match_reaches_the_xor_decoder(engine: Engine) -> None:
    exe = (CORPUS / "test.exe").read_bytes()
    encoded = bytes(b ^ 0x2A for b in exe)
    doc = engine.scan(encoded, "encoded.bin", {})
    root = doc["results"][0]
    assert root["workers"]["xor"]["key"] == "0x2a" and root["workers"]["xor"]["key_source"] == "option"
    (child,) = [p for p in doc["results"] if p["extracted_by"] == "xor"]
    assert child["sha256"] == hashlib.sha256(exe).hexdigest()


@pytest.mark.parametrize("argv", [["bsdtar", "-cf", "-"], ["bsdtar", "--format", "newc", "-cf", "-"],
                                  ["bsdtar", "--format", "ar", "-cf", "-"], ["zstd", "-q", "-c"]])
def test_an_archive_whose_first_member_is_a_pdf_is_not_read_as_one(engine: Engine, tmp_path: Path,
                                                                  argv: list[str]) -> None:
    """%PDF- within the first KiB makes a PDF (as readers accept it), but not in a tar (at 512), ar (at
    68), cpio (after its 110-byte header) or zstd frame (literals stored raw): decompress opens those,
    and pdftext reads the member."""
    import subprocess

    (tmp_path / "test.pdf").write_bytes((CORPUS / "test.pdf").read_bytes())
    data = subprocess.run([*argv, "test.pdf"], cwd=tmp_path, capture_output=True, check=True, timeout=60).stdout
    assert 0 < data.find(b"%PDF-") < 1024
    doc = engine.scan(data, "a", {})
    validate(doc)
    root, member = doc["results"][:2]
    assert "decompress" in root["workers"] and "pdftext" not in root["workers"] and doc["errors"] == []
    assert member["filename"] in ("test.pdf", None) and set(member["workers"]) == {"pdftext", "trailer"}
