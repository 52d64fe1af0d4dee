"""File filters of the sources (original stoQ's ``filedir`` options): ``--include``/``--exclude``
globs, ``--min-size``, ``--max-size``, ``--newer-than``.

A glob without ``/`` is matched against the file's name (``*.exe``); one with ``/`` against its path
relative to the directory given or watched (``sub/*``, ``*/tmp/*``; a file named on the command line:
its name), as :func:`fnmatch.fnmatchcase` matches (case matters; ``*`` crosses ``/``). A file must match
one ``--include`` when any is given, and no ``--exclude``. Sizes take a suffix ``k``, ``m``, ``g``
(KiB, MiB, GiB); both bounds are inclusive. ``--newer-than`` is a duration back from now (``90s``,
``30m``, ``2h``, ``3d``, ``1w``) or an ISO date or date and time (UTC when it names no zone): a file
passes when its mtime is at or after it. A file left out is counted, never reported as a failure.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(value: str) -> int:
    """``"10k"`` -> 10240; ``ValueError`` for anything else."""
    found = _SIZE.fullmatch(value.strip())
    if not found:
        raise ValueError(f"size {value!r}: a number of bytes, with an optional suffix k, m or g (KiB, MiB, GiB)")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def parse_since(value: str, now: float | None = None) -> float:
    """The epoch time ``--newer-than VALUE`` names: a duration back from ``now``, or an ISO date."""
    text = value.strip()
    found = _DURATION.fullmatch(text)
    if found:
        return (time.time() if now is None else now) - float(found.group(1)) * _SECONDS[found.group(2).lower()]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--newer-than {value!r}: a duration (90s, 30m, 2h, 3d, 1w) or an ISO date "
                         "(2026-01-31 or 2026-01-31T08:00:00+01:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


@dataclass
class FileFilter:
    """The filters of one command; ``left_out`` counts the files each one left out."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    min_size: int | None = None
    max_size: int | None = None
    newer_than: float | None = None  # epoch seconds
    left_out: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, include: list[str] | None, exclude: list[str] | None, min_size: str | None, max_size: str | None,
           newer_than: str | None) -> FileFilter:
        """From the command line's text; ``ValueError`` names a bad value."""
        return cls(list(include or []), list(exclude or []), None if min_size is None else parse_size(min_size),
                   None if max_size is None else parse_size(max_size),
                   None if newer_than is None else parse_since(newer_than))

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude) or (self.min_size, self.max_size, self.newer_than) != (None,) * 3

    @property
    def needs_stat(self) -> bool:
        return (self.min_size, self.max_size, self.newer_than) != (None,) * 3

    def why_not(self, path: str, st: os.stat_result | None = None, rel: str | None = None) -> str | None:
        """The option that leaves ``path`` out (``--exclude``...), or None when it passes. ``st``: its
        ``stat`` when the caller has it (needed for the size and date filters); ``rel``: its path
        relative to the directory it was found in (default: its name)."""
        name = os.path.basename(path)
        relative = name if rel is None else rel

        def matches(pattern: str) -> bool:
            return fnmatch.fnmatchcase(relative if "/" in pattern else name, pattern)
        if self.include and not any(matches(p) for p in self.include):
            return "--include"
        if any(matches(p) for p in self.exclude):
            return "--exclude"
        if self.needs_stat:
            if st is None:
                st = os.stat(path)
            if self.min_size is not None and st.st_size < self.min_size:
                return "--min-size"
            if self.max_size is not None and st.st_size > self.max_size:
                return "--max-size"
            if self.newer_than is not None and st.st_mtime < self.newer_than:
                return "--newer-than"
        return None

    def keep(self, path: str, st: os.stat_result | None = None, rel: str | None = None) -> bool:
        """Whether ``path`` passes; a file left out is counted under the option that left it out."""
        why = self.why_not(path, st, rel)
        if why is None:
            return True
        self.left_out[why] += 1
        return False

    def summary(self) -> str | None:
        """``3 file(s) left out by the filters (2 by --exclude, 1 by --min-size)``, or None."""
        total = sum(self.left_out.values())
        if not total:
            return None
        parts = ", ".join(f"{n} by {why}" for why, n in sorted(self.left_out.items()))
        return f"{total} file(s) left out by the filters ({parts})"
