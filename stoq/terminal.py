"""Text a scanned file controls, made safe for a terminal (and for a log file read in one).

stoq reads hostile files: a member name, a path or a plugin's error message can hold newlines (a forged
line of output), ANSI escape sequences (colours, cursor moves, a terminal title) or bidi overrides
(``txt.exe`` shown as ``exe.txt``). :func:`safe` is the one function that writes them visibly, used
by the table, every ``stoq:`` message, and log lines (:class:`SafeFormatter` in the CLI,
:class:`EscapingFilter` in the workers). JSON output is data and is left to the JSON encoder.
"""

from __future__ import annotations

import logging
import traceback
import unicodedata
from typing import Any

__all__ = ["EscapingFilter", "SafeFormatter", "safe"]

#: Unicode categories never written raw: controls (C0, DEL, C1), format characters (bidi overrides such
#: as U+202E, zero-width joiners), surrogates (bytes of a non-UTF-8 name), private use, unassigned code
#: points, and the line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if unicodedata.category(char) not in _HIDDEN:
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: object) -> str:
    """``value`` as text that shows the same on any terminal: every character that a terminal would
    interpret or that changes how a line looks (newlines, escape sequences, bidi overrides, ...) written
    as its Python escape (``\\n``, ``\\x1b``, ``\\u202e``), and a backslash as ``\\\\``, so the text cannot
    be mistaken for another. Used on every string a scanned file controls (names, paths, messages)
    before it reaches a terminal: the table, messages on stderr, log lines. Rich markup is left as
    text: nothing here is printed through rich's markup parser."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and "\\" not in text:  # the common case: nothing to change
        return text
    return "".join(map(_escape_char, text))


def safe_traceback(exc: BaseException) -> str:
    """A traceback whose frames keep their lines (each escaped) and whose exception messages are each
    one escaped line (an exception's message may quote a file)."""
    parts: list[str] = []
    for chunk in traceback.TracebackException.from_exception(exc).format():
        body = chunk[:-1] if chunk.endswith("\n") else chunk
        if chunk.startswith((" ", "Traceback", "\n")):  # frames, the header, "During handling of..."
            parts.extend(safe(line) for line in body.split("\n"))
        else:  # "Type: message" (and notes): the file's words
            parts.append(safe(body))
    return "\n".join(parts)


class SafeFormatter(logging.Formatter):
    """Log lines that a scanned file cannot forge: the message (which may quote a file name or a
    plugin's exception) is escaped whole, newlines included, so one record is one line; a traceback
    as :func:`safe_traceback`."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        shown = logging.makeLogRecord(record.__dict__)
        shown.message = safe(record.message)
        return super().formatMessage(shown)

    def formatException(self, ei: Any) -> str:
        return safe_traceback(ei[1])

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(safe(line) for line in stack_info.split("\n"))


class EscapingFilter(logging.Filter):
    """Escapes each record's message in place (for handlers whose formatter is not ours: Celery's):
    one record is one line, whatever a file name in it holds."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = safe(record.getMessage())
        record.args = None
        return True
