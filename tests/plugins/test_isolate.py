"""``_isolate.run_limited``, the forked parsing process of ``pdftext``: its result, its errors, its memory
limit, and the plugin's time limit reaching the parent while it waits (the child is killed and reaped)."""

from __future__ import annotations

import os
import time

import pytest

from stoq.runner import run_plugin
from stoq_plugins._isolate import MemoryLimit, ParseError, run_limited

MiB = 1 << 20


def no_children_left() -> bool:
    try:
        os.waitpid(-1, os.WNOHANG)  # a child running or not yet reaped
    except ChildProcessError:
        return True
    return False


def test_result_error_and_memory_limit() -> None:
    assert run_limited(lambda: {"text": "é" * 3, "pages": [1, 2]}, 64 * MiB, 10) == {"text": "ééé", "pages": [1, 2]}
    with pytest.raises(ParseError, match="^ZeroDivisionError: "):
        run_limited(lambda: 1 // 0, 64 * MiB, 10)
    with pytest.raises(MemoryLimit):
        run_limited(lambda: len(bytearray(512 * MiB)), 128 * MiB, 10)
    assert run_limited(lambda: len(bytearray(32 * MiB)), 128 * MiB, 10) == 32 * MiB
    with pytest.raises(ParseError, match=r"died \(signal 9\) without a result"):
        run_limited(lambda: os.kill(os.getpid(), 9), 64 * MiB, 10)
    assert no_children_left()


def test_the_plugin_time_limit_kills_the_parsing_process() -> None:
    started = time.monotonic()
    outcome = run_plugin("pdftext", lambda: run_limited(lambda: time.sleep(60), 64 * MiB, 120), "p", 1.0)
    assert outcome is not None and outcome.error is not None and outcome.error.kind == "timeout"
    assert time.monotonic() - started < 30  # (not the child's 60 s)
    assert no_children_left()
