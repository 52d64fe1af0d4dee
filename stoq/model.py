"""The scan document: the public, versioned result contract (``docs/scan-document.schema.json``).

The text rule, applied to every key and value a plugin or an input contributes: every string in a
document is valid Unicode with no U+0000, so it can be stored as PostgreSQL JSONB.
- ``bytes`` are decoded as UTF-8; each byte that is not part of a valid UTF-8 sequence becomes the four
  characters ``\\xNN`` (Python's ``backslashreplace``);
- a ``str`` holding lone surrogates (file names read with ``surrogateescape``) is first encoded back
  to its original bytes, then treated as bytes;
- U+0000 becomes the four characters ``\\x00``;
- dictionary keys are converted to strings; tuples and sets become lists (sets sorted);
- integers outside [-2**63, 2**64 - 1] become decimal strings; NaN and infinities become null.
"""

from __future__ import annotations

import codecs
import functools
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

SCHEMA_VERSION = "1.2"
#: A payload's name: its sha256 as 64 lower-case hex digits (``SHA256.fullmatch(text)``).
SHA256 = re.compile(r"[0-9a-f]{64}")

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
#: Deepest nesting of containers in a plugin's output: the document, the cluster's scan state and
#: answers add at most ~10 levels above it, and orjson writes at most 254.
MAX_NESTING = 200
_HEADROOM = 254 - MAX_NESTING
_SHELLS = threading.local()


def _surrogate_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    """Encoding error handler of the text rule: a lone surrogate from ``surrogateescape``
    (U+DC80-U+DCFF) becomes the byte it stands for, any other its three UTF-8-style bytes, which
    are not valid UTF-8 (and so become ``\\xNN`` when decoded)."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for char in exc.object[exc.start:exc.end]:
        code = ord(char)
        out += bytes((code - 0xDC00,)) if 0xDC80 <= code <= 0xDCFF else char.encode("utf-8", "surrogatepass")
    return bytes(out), exc.end


codecs.register_error("stoq-text", _surrogate_bytes)


def text(value: str | bytes) -> str:
    """Applies the text rule to one string or bytes value."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "stoq-text").decode("utf-8", "backslashreplace")
    else:
        value = bytes(value).decode("utf-8", "backslashreplace")
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def clean(value: Any, depth: int = 0) -> Any:
    """Makes any plugin output JSON-safe under the text rule (see the module docstring); raises
    ``ValueError`` for containers nested deeper than ``MAX_NESTING``."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return text(value)
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple, set, frozenset)) and depth >= MAX_NESTING:
        raise ValueError(f"output nested deeper than {MAX_NESTING} levels")
    if isinstance(value, dict):
        return {text(k) if isinstance(k, (str, bytes)) else text(str(k)): clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v, depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((clean(v, depth + 1) for v in value), key=lambda v: orjson.dumps(v))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return text(bytes(value))
    if isinstance(value, datetime):
        return iso(value)
    return text(str(value))


_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _orjson_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return text(bytes(value))
    raise TypeError  # anything else: the slow, general path


def json_safe(value: Any) -> Any:
    """``clean(value)``, faster for the common case: orjson serialises the value (bytes through the
    text rule) and the JSON is read back; only what orjson refuses (surrogates, integers beyond 64
    bits, non-string keys, sets, datetimes, nesting deeper than ``MAX_NESTING``...) or output holding
    a NUL takes ``clean``. The value is serialised inside ``_HEADROOM`` levels of lists, so that
    orjson's own limit (254 levels) refuses what is nested deeper than ``MAX_NESTING``."""
    shell = getattr(_SHELLS, "shell", None)
    if shell is None:  # one per thread: [[...[slot]...]], ``_HEADROOM`` lists deep
        slot: list[Any] = [None]
        shell = slot
        for _ in range(_HEADROOM - 1):
            shell = [shell]
        _SHELLS.shell, _SHELLS.slot = shell, slot
    _SHELLS.slot[0] = value
    try:
        raw = orjson.dumps(shell, default=_orjson_default, option=_PASSTHROUGH)
    except TypeError:
        return clean(value)
    finally:
        _SHELLS.slot[0] = None
    if b"\\u0000" in raw:
        return clean(value)
    return orjson.loads(raw[_HEADROOM:-_HEADROOM])


def new_id() -> str:
    """A new scan or payload id: a UUID version 7 (RFC 9562), time-ordered, so that the store's
    indexes grow at their end instead of at random places."""
    ms = time.time_ns() // 1_000_000
    rand = os.urandom(10)
    # 48 bits of milliseconds, version 7 and 12 random bits, variant 0b10 and 62 random bits; written
    # out directly rather than through uuid.UUID, which costs more, for two or three ids per payload
    # (the figures: docs/performance.md).
    h = ((ms & (2**48 - 1)).to_bytes(6, "big") + bytes((0x70 | rand[0] & 0x0F, rand[1], 0x80 | rand[2] & 0x3F))
         + rand[3:]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, as every date in a document is written."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


@dataclass(slots=True)
class ScanErrorEntry:
    """A plugin failure: ``kind`` is ``error`` (it raised), ``timeout``, ``crash`` (its process died) or
    ``tool-missing`` (an external program it runs is not installed)."""

    payload_id: str
    plugin: str
    kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"payload_id": self.payload_id, "plugin": self.plugin, "kind": self.kind,
                "message": text(self.message)}


@dataclass(slots=True)
class PayloadRecord:
    """One entry of ``results``: a payload, where it came from, and what the plugins said of it."""

    payload_id: str
    parent_id: str | None
    depth: int
    filename: str | None
    extracted_by: str | None
    meta: dict[str, Any]
    size: int
    md5: str
    sha1: str
    sha256: str
    sha512: str
    mime: str
    duplicate_of: str | None = None
    workers: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "payload_id": self.payload_id,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "filename": None if self.filename is None else text(self.filename),
            "extracted_by": self.extracted_by,
            "meta": self.meta,
            "duplicate_of": self.duplicate_of,
            "size": self.size,
            "md5": self.md5,
            "sha1": self.sha1,
            "sha256": self.sha256,
            "sha512": self.sha512,
            "mime": self.mime,
            "workers": self.workers,
            "flags": self.flags,
        }


def document(scan_id: str, date: str, source: dict[str, Any], results: list[PayloadRecord],
             errors: list[ScanErrorEntry]) -> dict[str, Any]:
    """Assembles a scan document (schema ``SCHEMA_VERSION``)."""
    return assemble(scan_id, date, source, [r.as_dict() for r in results], [e.as_dict() for e in errors])


def assemble(scan_id: str, date: str, source: dict[str, Any], results: list[dict[str, Any]],
             errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A scan document from results and errors already in their document form (the cluster keeps
    them so in a scan's state); checked when ``CHECK_DOCUMENTS`` is set."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "scan_id": scan_id,
        "date": date,
        "source": clean(source),
        "payloads": len(results),
        "results": results,
        "errors": errors,
    }
    if CHECK_DOCUMENTS:
        check_document(doc)
    return doc


#: Development aid, set by the test suite to the path of ``docs/scan-document.schema.json``: every
#: document stoq assembles (embedded or in the cluster) is checked against the contract, in whichever
#: process assembles it.
CHECK_DOCUMENTS = os.environ.get("STOQDEV_CHECK_DOCUMENTS", "")


def check_document(doc: dict[str, Any]) -> None:
    """Raises ``ValueError`` unless ``doc`` follows the schema at ``CHECK_DOCUMENTS`` (needs
    ``jsonschema``, a test dependency) and what the schema cannot say: ``payloads``
    counts ``results``, payload ids are unique, parents come before their children, no ``\\u0000``."""
    problems = [f"{list(e.path)}: {e.message}" for e in _validator().iter_errors(doc)]
    ids = [p.get("payload_id") for p in doc.get("results", [])]
    seen: set[Any] = set()
    for payload in doc.get("results", []):
        if (payload.get("parent_id") is None) != (payload.get("depth") == 0) or (
                payload.get("parent_id") is not None and payload["parent_id"] not in seen):
            problems.append(f"payload {payload.get('payload_id')}: parent missing, later or inconsistent with depth")
        seen.add(payload.get("payload_id"))
    if doc.get("payloads") != len(ids) or len(set(ids)) != len(ids):
        problems.append("payloads does not count distinct results")
    if b"\\u0000" in orjson.dumps(doc):
        problems.append("a string holds U+0000")
    if problems:
        raise ValueError("document breaks the contract: " + "; ".join(problems[:10]))


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # a test dependency: only this development aid uses it

    return jsonschema.Draft202012Validator(orjson.loads(Path(CHECK_DOCUMENTS).read_bytes()))


def dumps(doc: Any, *, indent: bool = False) -> bytes:
    """Serialises a document (already cleaned) to JSON bytes."""
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
