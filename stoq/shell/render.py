"""What ``stoq shell`` prints: plain functions from the session's data to lines of text.

Every string a scanned file controls (names, MIME types, plugin output, error messages, strings)
goes through :func:`stoq.terminal.safe` here, before any colour is added: colour codes are the only
control sequences the shell writes, and only its own. Output that grows with the payload is capped.
"""

from __future__ import annotations

import os
import re
from typing import IO, Any

from stoq.shell.session import Node, OptionInfo
from stoq.terminal import safe

#: Most bytes one ``hexdump`` shows (the rest: ``hexdump OFFSET``).
HEXDUMP_MAX = 16384
HEXDUMP_DEFAULT = 256
#: Most strings one ``strings`` lists, and the most characters shown of one.
STRINGS_MAX = 2000
STRING_CHARS = 160
#: Most lines of one plugin's pretty-printed output.
OUTPUT_LINES = 2000


class Palette:
    """ANSI colours for the shell's own labels, or none: off unless the stream is a terminal, and
    off when ``NO_COLOR`` is set (https://no-color.org) or ``TERM`` is ``dumb``."""

    CODES = {"title": "1", "label": "36", "error": "31", "ok": "32", "dim": "2", "warn": "33"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: IO[str], env: dict[str, str] | os._Environ[str] = os.environ) -> Palette:
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(tty and not env.get("NO_COLOR") and env.get("TERM", "") != "dumb")

    def paint(self, role: str, text: str) -> str:
        return f"\x1b[{self.CODES[role]}m{text}\x1b[0m" if self.enabled and text else text


def plugin_list(groups: list[tuple[str, list[tuple[str, str, str]]]], p: Palette) -> list[str]:
    lines = []
    for category, rows in groups:
        lines.append(p.paint("title", f"{category}:"))
        for name, version, description in rows:
            shown = p.paint("error", "ERROR") if version == "ERROR" else safe(version)
            lines.append(f"  {p.paint('label', f'{name:<14}')} {shown:<8} {safe(description)}")
    return lines


def shown_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(map(str, value)) or "(empty)"
    return str(value) if str(value) != "" else "(empty)"


def usage(cls: Any, options: list[OptionInfo], p: Palette) -> list[str]:
    lines = [p.paint("title", f"{cls.name}") + f" ({cls.category}, version {safe(cls.version)})",
             f"  {safe(cls.summary())}", f"  options (set {cls.name}.OPTION VALUE):"]
    for o in options:
        default = "the timeout setting" if o.default is None and o.name == "time_limit" else shown_value(o.default)
        changed = "" if o.value == o.default else "  " + p.paint("warn", f"now {safe(shown_value(o.value))}")
        lines.append(f"    {p.paint('label', o.name)}  {o.type}, default {safe(default)}{changed}")
        lines.append(f"        {safe(o.description)}")
    return lines


def where(node: Node) -> str:
    """The payload's place in the tree: ``test.zip > 0:member.txt``."""
    parts = []
    for n in node.path():
        index = f"{n.index()}:" if n.parent is not None else ""
        parts.append(f"{index}{safe(n.name)}")
    return " > ".join(parts)


def payload(node: Node, p: Palette) -> list[str]:
    f = node.facts
    rows = [("payload", where(node)), ("size", f"{f['size']} B"), ("mime", safe(f["mime"]))]
    rows += [(h, f[h]) for h in ("md5", "sha1", "sha256", "sha512")]
    rows += [("flags", " ".join(map(safe, node.flags)) or "-"), ("depth", str(node.depth))]
    if node.extracted_by:
        rows.append(("extracted by", safe(node.extracted_by)))
    rows.append(("children", str(len(node.children))))
    rows.append(("plugins run", safe(", ".join(node.outputs)) or "-"))
    return [f"{p.paint('label', f'{k:<13}')}{v}" for k, v in rows]


def children(node: Node, p: Palette) -> list[str]:
    if not node.children:
        return ["no children (`scan`, or `run` an extractor)"]
    lines = []
    for i, c in enumerate(node.children):
        flags = "  [" + " ".join(map(safe, c.flags)) + "]" if c.flags else ""
        dup = "  " + p.paint("dim", "(duplicate)") if c.duplicate else ""
        lines.append(f"  {p.paint('label', f'{i:>3}')}  {safe(c.name)}  {safe(c.facts['mime'])}  {c.facts['size']} B  "
                     f"sha256:{c.facts['sha256'][:16]}  by {safe(c.extracted_by or '-')}"
                     f"  children:{len(c.children)}{flags}{dup}")
    return lines


def pretty(data: Any, p: Palette, indent: int = 0, limit: int = OUTPUT_LINES) -> list[str]:
    """A plugin's JSON-safe output as indented ``key: value`` lines, every key and value escaped."""
    lines: list[str] = []
    _pretty(data, indent, lines, p, limit + 1)
    if len(lines) > limit:
        lines = lines[:limit] + [p.paint("dim", f"... cut at {limit} lines")]
    return lines


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    return safe(value)


def _pretty(data: Any, indent: int, lines: list[str], p: Palette, limit: int) -> None:
    pad = "  " * indent
    if len(lines) >= limit:
        return
    if isinstance(data, dict):
        if not data:
            lines.append(f"{pad}{{}}")
        for key, value in data.items():
            label = p.paint("label", safe(key))
            if isinstance(value, (dict, list)) and value and not _flat(value):
                lines.append(f"{pad}{label}:")
                _pretty(value, indent + 1, lines, p, limit)
            else:
                lines.append(f"{pad}{label}: {_inline(value)}")
            if len(lines) >= limit:
                return
    elif isinstance(data, list):
        if _flat(data):
            lines.append(f"{pad}{_inline(data)}")
            return
        for item in data:
            if isinstance(item, (dict, list)) and item:  # "- first: line", the rest under it
                start = len(lines)
                _pretty(item, indent + 1, lines, p, limit)
                if start < len(lines):
                    lines[start] = f"{pad}- " + lines[start][len(pad) + 2:]
            else:
                lines.append(f"{pad}- {_inline(item)}")
            if len(lines) >= limit:
                return
    else:
        lines.append(f"{pad}{_scalar(data)}")


def _flat(value: Any) -> bool:
    """A short list of scalars, shown on one line."""
    return isinstance(value, list) and len(value) <= 8 and all(not isinstance(v, (dict, list)) for v in value) \
        and sum(len(str(v)) for v in value) <= 100


def _inline(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return _scalar(value)


def hexdump(content: bytes, offset: int, length: int) -> list[str]:
    """``offset  16 bytes in hex  |ascii|`` lines; at most :data:`HEXDUMP_MAX` bytes. The ASCII column
    holds printable ASCII only (0x20-0x7e), every other byte as ``.``: nothing a terminal interprets."""
    if not content:
        return ["(an empty payload)"]
    if offset >= len(content):
        return [f"offset {offset:#x} is past the end ({len(content)} bytes)"]
    shown = min(length, HEXDUMP_MAX)
    chunk = content[offset:offset + shown]
    lines = []
    for at in range(0, len(chunk), 16):
        row = chunk[at:at + 16]
        hexes = " ".join(f"{b:02x}" for b in row[:8]) + "  " + " ".join(f"{b:02x}" for b in row[8:])
        text = "".join(chr(b) if 0x20 <= b < 0x7f else "." for b in row)
        lines.append(f"{offset + at:08x}  {hexes:<48}  |{text}|")
    if length > HEXDUMP_MAX and offset + shown < len(content):
        lines.append(f"(cut at {HEXDUMP_MAX} bytes: `hexdump {offset + shown:#x}` goes on)")
    return lines


def strings(content: bytes, minimum: int = 4) -> list[str]:
    """ASCII and UTF-16LE strings of at least ``minimum`` characters, in file order, each with its
    offset (``u`` marks UTF-16); at most :data:`STRINGS_MAX`, each cut at :data:`STRING_CHARS`."""
    pattern = re.compile(rb"[\x20-\x7e]{%d,}|(?:[\x20-\x7e]\x00){%d,}" % (minimum, minimum))
    lines = []
    for match in pattern.finditer(content):
        raw = match.group()
        wide = len(raw) > 1 and raw[1] == 0
        text = raw.decode("utf-16-le" if wide else "ascii")
        cut = text[:STRING_CHARS] + ("..." if len(text) > STRING_CHARS else "")
        lines.append(f"{match.start():08x} {'u' if wide else ' '} {safe(cut)}")
        if len(lines) >= STRINGS_MAX:
            lines.append(f"(cut at {STRINGS_MAX} strings)")
            break
    return lines


def errors(node: Node, p: Palette) -> list[str]:
    return [p.paint("error", f"! {safe(e['kind'])} in {safe(e['plugin'])}") + f": {safe(e['message'])}"
            for e in node.errors]
