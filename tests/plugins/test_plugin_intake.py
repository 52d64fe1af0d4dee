"""The ``intake`` source plugin in process: its options and the handler it builds, fed deliveries by
hand (no broker): what it accepts and what it dead-letters, with the reason. The command runs
against real RabbitMQ and Redis in tests/test_intake.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from stoq.config import ConfigError, Settings
from stoq.intake import Delivery
from stoq.registry import Registry, make_options


def test_options_are_typed_and_bounded() -> None:
    cls = Registry.discover().get("intake")
    assert cls.category == "source"
    assert make_options(cls, {"max_inline": "100"}).max_inline == 100
    with pytest.raises(ConfigError, match="intake.max_inline"):
        make_options(cls, {"max_inline": str(17 << 20)})


def test_the_handler_accepts_and_dead_letters(tmp_path: Path) -> None:
    cls = Registry.discover().get("intake")
    source = cls(make_options(cls, {"max_inline": "8"}))
    calls: list[Any] = []

    def submit(settings: Settings, roots: list[Any]) -> tuple[list[str], dict[str, str]]:
        calls.append((settings.workers, [(r.shown, r.meta, r.path.read_bytes()) for r in roots]))
        return [r.scan_id for r in roots], {}
    spool = tmp_path / "spool"
    spool.mkdir()
    handler = source.intake(Settings(), [], {"source": "t"}, submit, spool)
    good = Delivery(json.dumps({"content_b64": base64.b64encode(b"12345678").decode(), "filename": "n.bin",
                                "workers": ["hash"]}).encode(), "redis:s:1-0", "tag1")
    big = Delivery(json.dumps({"content_b64": base64.b64encode(b"123456789").decode()}).encode(), None, "tag2")
    path = Delivery(json.dumps({"path": str(tmp_path / "x")}).encode(), None, "tag3")
    done, dead = handler.handle([good, big, path])
    assert done == [good]
    assert calls == [(["hash"], [("n.bin", {"source": "t"}, b"12345678")])]
    assert [(d.tag, why) for d, why in dead] == [
        ("tag2", "inline content too big: 9 bytes, at most 8 (--max-inline)"),
        ("tag3", f"path {str(tmp_path / 'x')!r} is outside the directories intake may read (--paths-under)")]
    assert list(spool.iterdir()) == []  # spooled content removed once settled
