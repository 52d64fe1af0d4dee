"""Shared fixtures: the sample corpus, the schema validator, isolated settings, the test plugins."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
BENCH_RULES = SHARED / "bench" / "rules200.yar"
SCHEMA = json.loads((ROOT / "docs" / "scan-document.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
PG_URL = os.environ.get("STOQ_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


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


@pytest.fixture(scope="session")
def testplugins_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the misbehaving test plugins installed as a distribution (dist-info with
    entry points), put on sys.path for in-process tests; subprocess tests add it to PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    shutil.copy(ROOT / "tests" / "testplugins" / "stoq_testplugins.py", site)
    info = site / "stoq_testplugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stoq-testplugins\nVersion: 1.0\n")
    shutil.copy(ROOT / "tests" / "testplugins" / "entry_points.txt", info / "entry_points.txt")
    sys.path.insert(0, str(site))
    return site


@pytest.fixture()
def stoq_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a ``stoq`` subprocess: private archive, SQLite store and config dirs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update({
        "HOME": str(tmp_path / "home"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "STOQ_ARCHIVE": str(tmp_path / "archive"),
        "STOQ_DATABASE_URL": f"sqlite:///{tmp_path / 'stoq.db'}",
    })
    return env


@pytest.fixture()
def run_stoq(stoq_env: dict[str, str], tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    """Runs the installed ``stoq`` command; returns the completed process (stdout/stderr as bytes)."""
    exe = Path(sys.executable).parent / "stoq"

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
        full = dict(stoq_env, **(env or {}))
        return subprocess.run([str(exe), *args], capture_output=True, env=full, cwd=tmp_path, timeout=timeout)

    return run


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
