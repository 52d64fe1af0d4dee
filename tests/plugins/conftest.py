"""Shared fixtures of the plugin tests: the sample corpus and a payload factory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

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
