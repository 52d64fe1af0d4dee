"""Paths and checks shared by the tests (imported as ``helpers``; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
BENCH_RULES = SHARED / "bench" / "rules200.yar"
SCHEMA = json.loads((ROOT / "docs" / "scan-document.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
PG_URL = os.environ.get("STOQ_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
EXPECTED_CHILDREN: dict[str, Any] = json.loads((CORPUS / "expected_children.json").read_text())

#: The Debian package of each external program the tests or the bundled plugins run (a test checks
#: that it covers every plugin's declared tools and that .ci/apt-packages lists them all).
TOOL_PACKAGES = {
    "7z": "p7zip-full", "unar": "unar", "lsar": "unar", "bsdtar": "libarchive-tools", "bsdcat": "libarchive-tools",
    "gpg": "gnupg", "gpgconf": "gnupg", "lzip": "lzip", "zstd": "zstd", "rpmbuild": "rpm",
    "genisoimage": "genisoimage", "mkudffs": "udftools", "qemu-img": "qemu-utils", "mkfs.fat": "dosfstools",
    "mmd": "mtools", "mcopy": "mtools", "file": "file", "ssdeep": "ssdeep", "tlsh": "tlsh-tools",
    "exiftool": "libimage-exiftool-perl", "clamd": "clamav-daemon",
    "tmux": "tmux", "hexdump": "bsdextrautils",  # the shell's terminal test, and its hexdump's reference
    "objdump": "binutils",
}


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.is_file() and p.name not in ("README.md", "expected_children.json"))


def validate(doc: dict[str, Any]) -> None:
    """Fails the test with every schema violation of ``doc``, and checks what the schema cannot say."""
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    assert doc["payloads"] == len(doc["results"])
    ids = [p["payload_id"] for p in doc["results"]]
    assert len(set(ids)) == len(ids)
    seen: set[str] = set()
    for p in doc["results"]:  # parents before children
        assert (p["parent_id"] is None) == (p["depth"] == 0)
        if p["parent_id"] is not None:
            assert p["parent_id"] in seen
        seen.add(p["payload_id"])
    assert b"\\u0000" not in json.dumps(doc).encode()


def make_zip(members: dict[str, bytes]) -> bytes:
    """A deflated zip of ``members`` (name -> bytes), built with the standard library."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def pg_admin() -> Any:
    """An autocommit SQLAlchemy engine on the test PostgreSQL database (it must be reachable)."""
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
