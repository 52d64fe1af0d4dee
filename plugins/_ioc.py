"""IOC extraction for the ``iocextract`` worker: ioc-finder over bounded chunks of the payload's text.

ioc-finder's grammar (pyparsing) takes time that grows faster than linearly with the length of a run of
near-matches (``a.a.a.``, ``hxxp://x[.]...``): the text is therefore scanned in chunks of at most
``CHUNK`` characters, cut at whitespace where there is some (no IOC contains whitespace), so the total
time grows linearly with the bytes examined, and a deadline is checked between chunks.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

#: The IOC types reported, ioc-finder's names (also the keys of the plugin's output).
IOC_TYPES = ("urls", "domains", "ipv4s", "ipv6s", "email_addresses", "md5s", "sha1s", "sha256s", "cves")

#: Most characters given to ioc-finder at once; an IOC longer than this, in text without whitespace, is cut.
CHUNK = 2048
WHITESPACE = " \t\r\n\f\v"
#: Punctuation removed from the end of a URL.
TRAILING = ".,;:!?"


@dataclass
class Found:
    """The distinct IOCs found per type, and whether the deadline stopped the scan before the end."""

    iocs: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in IOC_TYPES})
    timed_out: bool = False


def chunks(text: str, size: int = CHUNK) -> list[tuple[int, int]]:
    """Spans of ``text`` of at most ``size`` characters, ending after a whitespace where the second half of
    the window has one."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(text):
        end = min(pos + size, len(text))
        if end < len(text):
            cut = max(text.rfind(c, pos + size // 2, end) for c in WHITESPACE)
            if cut >= 0:
                end = cut + 1
        spans.append((pos, end))
        pos = end
    return spans


def finder() -> Callable[..., dict[str, Any]]:
    """ioc-finder's ``find_iocs``, imported on first use: building its grammar at import takes longer than
    a whole small scan, and every ``stoq`` command loads this module (plugin discovery), most without
    running iocextract. ``IocextractPlugin.setup`` calls it, so a pool's processes inherit the import."""
    return importlib.import_module("ioc_finder").find_iocs  # type: ignore[no-any-return]


def tidy(kind: str, value: str) -> str:
    """A URL without the sentence punctuation ioc-finder keeps at its end (``https://x.example/a.`` at the
    end of a sentence); other values as found."""
    return value.rstrip(TRAILING) if kind == "urls" else value


def extract(text: str, deadline: float) -> Found:
    """Every IOC of ``IOC_TYPES`` in ``text`` (defanged forms refanged by ioc-finder), until ``deadline``
    (``time.monotonic()``)."""
    found = Found()
    find_iocs = finder()
    for start, end in chunks(text):
        if time.monotonic() > deadline:
            found.timed_out = True
            break
        result = find_iocs(text[start:end], included_ioc_types=IOC_TYPES)
        for kind in IOC_TYPES:
            values = result.get(kind) or []
            found.iocs[kind].update(tidy(kind, v) for v in values if isinstance(v, str))
    return found
