"""Per-scan budgets and the flags that record when one stops work.

| flag             | set on                          | meaning                                                   |
|------------------|---------------------------------|-----------------------------------------------------------|
| `limit:depth`    | the payload at the depth limit  | its children were not extracted or not kept               |
| `limit:children` | the parent of a dropped child   | the scan already holds `max_children` extracted payloads  |
| `limit:bytes`    | the parent of a dropped child   | the child would take the scan past `max_bytes` extracted  |
|                  | a payload whose extractors did not run | the scan's `max_bytes` was spent when its wave began |
| `limit:file-bytes` | a root over `max_file_bytes`  | the input was only hashed (streamed) and typed (first MiB); no plugin ran, nothing archived |
| `limit:scan-time` | a child begun after `max_scan_seconds` | it was hashed, typed, archived and listed, but no plugin ran on it (so nothing was extracted from it) |

A dropped child is never analysed and never appears in ``results``; its parent carries the flag.
Every byte an extractor produces counts against ``max_bytes``, kept or not: the children admitted (their
sizes), and what a plugin reports it decompressed and then dropped (``Result.extracted_bytes``, beyond
its children's sizes). Once nothing is left, extracting plugins no longer run (``limit:bytes``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scan (defaults: depth 8, 1000 children, 512 MiB extracted, 600 s)."""

    max_depth: int = 8
    max_children: int = 1000
    max_bytes: int = 512 * 1024 * 1024
    max_seconds: float = 600.0  # 0: no limit

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits a ``stoq.config.Settings`` sets."""
        return cls(settings.max_depth, settings.max_children, settings.max_bytes, settings.max_scan_seconds)


@dataclass(slots=True)
class Budget:
    """What one scan has used of its limits, and the payloads it has already seen (by sha256)."""

    limits: Limits
    children: int = 0
    bytes: int = 0
    seen: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)  # wall clock: the cluster's waves share it
    #: Hashes and MIME type of the payloads typed in this process during the scan, by sha256: a
    #: duplicate's record repeats them without hashing or typing the same bytes again (the cluster's
    #: state does not carry them: there each wave's task types its payloads itself).
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def overtime(self) -> bool:
        """True once the scan has run longer than ``max_seconds`` (never with 0)."""
        return 0 < self.limits.max_seconds < time.time() - self.started

    def admit(self, depth: int, size: int) -> str | None:
        """Takes a child into the scan, or returns the flag that says why it cannot be."""
        if depth > self.limits.max_depth:
            return "limit:depth"
        if self.children >= self.limits.max_children:
            return "limit:children"
        if self.bytes + size > self.limits.max_bytes:
            return "limit:bytes"
        self.children += 1
        self.bytes += size
        return None

    def left(self) -> int:
        """Bytes the scan may still extract (0 once ``max_bytes`` is used up)."""
        return max(0, self.limits.max_bytes - self.bytes)

    def spend(self, size: int) -> None:
        """Counts ``size`` bytes extracted and dropped by a plugin (no child holds them)."""
        self.bytes += size

    def first_seen(self, sha256: str, payload_id: str) -> str | None:
        """The payload id that first had this sha256 in the scan, or None (and remembers this one)."""
        first = self.seen.get(sha256)
        if first is None:
            self.seen[sha256] = payload_id
        return first
