"""What a submission carries besides its files: the submission metadata (``--meta key=value``, a
queue message's ``meta``) and the roots as sources hand them to the two modes (a path, the scan id
chosen beforehand, the metadata).

Metadata lands in the scan document as ``source["meta"]``: an object of strings (docs/results.md).
Keys are lower-case ``[a-z0-9_.-]``, at most ``MAX_KEY`` characters; values at most ``MAX_VALUE``
characters; at most ``MAX_ENTRIES`` keys. ``tlp`` is checked against the Traffic Light Protocol's
names (``TLP``), stored lower-case: connectors filter on it (a TLP:RED document is never sent to a
connector configured for a lower TLP). Anything else is refused with a message naming the entry,
never cut silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

MAX_ENTRIES = 32
MAX_KEY = 64
MAX_VALUE = 1024
KEY = re.compile(r"[a-z0-9_.-]{1,64}")
#: TLP 2.0's names, and TLP 1.0's ``white`` (what older feeds still send).
TLP = ("clear", "white", "green", "amber", "amber+strict", "red")


class MetaError(ValueError):
    """A metadata entry that cannot be kept: a bad key, a value too long, too many, a bad TLP."""


def check_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """The metadata as the document keeps it (``tlp`` lower-cased), or ``MetaError`` naming what is
    wrong. Values must be strings: a queue message's ``{"case": 12}`` is refused, not converted."""
    if len(meta) > MAX_ENTRIES:
        raise MetaError(f"{len(meta)} meta entries: at most {MAX_ENTRIES}")
    out: dict[str, str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not KEY.fullmatch(key):
            raise MetaError(f"meta key {key!r}: use 1 to {MAX_KEY} lower-case letters, digits, '_', '.', '-'")
        if not isinstance(value, str):
            raise MetaError(f"meta {key}: the value must be a string, not {type(value).__name__}")
        if len(value) > MAX_VALUE:
            raise MetaError(f"meta {key}: the value has {len(value)} characters, at most {MAX_VALUE}")
        if "\x00" in value:
            raise MetaError(f"meta {key}: the value holds a NUL character")
        if key == "tlp":
            value = value.lower()
            if value not in TLP:
                raise MetaError(f"meta tlp={value!r}: one of {', '.join(TLP)}")
        out[key] = value
    return out


def parse_meta(pairs: Iterable[str]) -> dict[str, str]:
    """``["tlp=amber", "case=42"]`` (``--meta``, repeatable) as checked metadata. A key given twice
    keeps its last value, as a repeated option does everywhere else."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MetaError(f"--meta {pair!r} is not of the form KEY=VALUE")
        meta[key.strip()] = value
    return check_meta(meta)


def source_of(path: str, meta: Mapping[str, str] | None) -> dict[str, Any]:
    """A root's ``source``: its path, and its metadata when there is any."""
    return {"path": path, "meta": dict(meta)} if meta else {"path": path}


@dataclass(slots=True)
class Root:
    """One root file a source submits: its path, the scan id chosen beforehand (a source that must not
    submit twice records it first: storing a scan id again changes nothing), its metadata."""

    path: Path
    scan_id: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    #: What the document names as ``source.path`` and the root's filename is taken from, when the
    #: file read is a stand-in (a queue message's inline content, spooled): default ``path``.
    shown: str | None = None


def roots_of(items: Iterable[Path | Root], meta: Mapping[str, str] | None = None) -> list[Root]:
    """Paths as roots with ``meta``; roots as they are."""
    return [item if isinstance(item, Root) else Root(item, None, dict(meta or {})) for item in items]
