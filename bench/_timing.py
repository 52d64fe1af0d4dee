"""What the per-plugin benchmarks (workers.py, exif_clamav.py, pe_yara.py) share: a payload made of
bytes, and the median wall time of a call."""

from __future__ import annotations

import hashlib
import statistics
import time
from typing import Callable

from stoq.plugin import Payload

RUNS = 5


def payload(content: bytes, name: str | None, mime: str = "application/octet-stream") -> Payload:
    return Payload(content=content, payload_id="bench", filename=name, mime=mime,
                   sha256=hashlib.sha256(content).hexdigest(), depth=0)


def median(fn: Callable[[], object], runs: int = RUNS) -> float:
    """The median of ``runs`` timings of ``fn()``, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
