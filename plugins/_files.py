"""File writing for the ``file`` connector: dated folders, atomic replacement, locked appends."""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T")


def dated_dir(root: Path, date: str) -> Path:
    """``root/YYYY/MM/DD`` of a document's ISO 8601 ``date`` (UTC, as stoq writes it); a date that does
    not parse (never from stoq) goes to ``root/undated``. The scan's date, not today's, so that a
    retried document lands where its first copy did."""
    m = _DATE.match(date)
    return root.joinpath(*m.groups()) if m else root / "undated"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, doc: dict[str, Any], indent: bool = False) -> None:
    """Writes ``doc`` as JSON to ``path``: a temporary file in the same folder, fsynced, renamed over
    ``path``, then the folder fsynced (the rename survives a power cut). Mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0) + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def append_lines(path: Path, docs: list[dict[str, Any]]) -> None:
    """Appends one compact JSON line per document under an exclusive ``flock`` (processes appending to
    the same file never interleave lines), one ``write`` per line, then fsyncs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [orjson.dumps(doc) + b"\n" for doc in docs]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for line in lines:
            os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
