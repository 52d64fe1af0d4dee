"""Shared fixtures of the plugin tests: the sample corpus and a payload factory."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from stoq.plugin import Payload

from helpers import CORPUS


@pytest.fixture
def corpus() -> Path:
    return CORPUS


@pytest.fixture
def make_payload() -> Callable[..., Payload]:
    """``make_payload(content, mime=..., filename=...)``: a depth-0 payload as the framework builds it."""

    def make(content: bytes, mime: str = "application/octet-stream", filename: str | None = None) -> Payload:
        return Payload(content=content, payload_id="test", filename=filename, mime=mime,
                       sha256=hashlib.sha256(content).hexdigest(), depth=0)

    return make


@pytest.fixture
def scratch_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Scratch directories are made in ``tmp_path/scratch``, which must be empty after the test."""
    parent = tmp_path / "scratch"
    parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    yield parent
    assert list(parent.iterdir()) == []
