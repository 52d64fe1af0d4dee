"""Writers for scan documents on stdout: ``jsonl``, ``json``, ``table`` and Jinja2 templates."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from stoq.templates import TemplateFailure, compile_template, render
from stoq.terminal import safe

__all__ = ["Format", "TemplateFailure", "Writer", "safe", "table"]


class Format(str, Enum):
    """Output formats of ``scan``, ``submit`` and ``results``."""

    jsonl = "jsonl"
    json = "json"
    table = "table"


class Writer:
    """Writes documents one at a time; ``close`` finishes the output (the closing ``]`` of json)."""

    def __init__(self, fmt: Format, template: str | Path | None = None, out: BinaryIO | None = None) -> None:
        self.fmt = fmt
        self.out = out if out is not None else sys.stdout.buffer
        self.count = 0
        self.template = None
        if template is not None:  # a file or builtin:NAME, compiled in a sandbox (stoq.templates)
            self.template = compile_template(template)

    def write(self, doc: dict[str, Any], raw: bytes | None = None) -> None:
        """Writes one document; ``raw`` is its compact JSON if already serialised."""
        if self.template is not None:  # ``index``: 0 for the first document (a CSV header, say)
            try:
                self.out.write(render(self.template, doc=doc, index=self.count).encode())
            except TemplateFailure as exc:
                raise TemplateFailure(f"template failed on scan {doc.get('scan_id')}: {exc}") from exc
        elif self.fmt is Format.jsonl:
            self.out.write((raw if raw is not None else orjson.dumps(doc)) + b"\n")
        elif self.fmt is Format.json:
            self.out.write(b"[\n" if self.count == 0 else b",\n")
            self.out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        else:
            self.out.write(table(doc).encode())
        self.count += 1

    def close(self) -> None:
        if self.template is None and self.fmt is Format.json:
            self.out.write(b"[]\n" if self.count == 0 else b"\n]\n")
        self.out.flush()


def table(doc: dict[str, Any]) -> str:
    """A human summary: the payload tree (each child under its parent, indented), then the errors.
    Every value a file controls goes through :func:`safe`: one payload is always one line. A payload is
    named by its path in the tree (``invoice.zip > notes.txt.gz > notes.txt``) where the table refers to
    it (a duplicate's original, an error's payload), never by an id the table does not show."""
    lines = [f"scan {doc['scan_id']}  {doc['date']}  {doc['payloads']} payload(s)  {safe(doc['source'].get('path', ''))}"]
    children: dict[str | None, list[dict[str, Any]]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for p in doc["results"]:
        children.setdefault(p["parent_id"], []).append(p)
        by_id[p["payload_id"]] = p

    def where(payload_id: str | None) -> str:
        names: list[str] = []
        while payload_id is not None and payload_id in by_id and len(names) <= len(by_id):
            p = by_id[payload_id]
            names.append(safe(p["filename"]) if p["filename"] is not None else "-")
            payload_id = p["parent_id"]
        return " > ".join(reversed(names)) if names else safe(payload_id)

    stack = list(reversed(children.get(None, [])))
    while stack:
        p = stack.pop()
        indent = "  " * (p["depth"] + 1)
        name = safe(p["filename"]) if p["filename"] is not None else "-"
        extra = f"  (duplicate of {where(p['duplicate_of'])})" if p["duplicate_of"] else ""
        plugins = safe(",".join(p["workers"])) or "-"
        flags = "  [" + " ".join(map(safe, p["flags"])) + "]" if p["flags"] else ""
        lines.append(f"{indent}{name}  {safe(p['mime'])}  {p['size']} B  sha256:{p['sha256'][:16]}  plugins:{plugins}{flags}{extra}")
        yara = p["workers"].get("yara")
        if isinstance(yara, dict) and yara.get("matches"):
            lines.append(f"{indent}  yara: " + ", ".join(safe(m.get("rule", "?")) for m in yara["matches"]))
        stack.extend(reversed(children.get(p["payload_id"], [])))
    for e in doc["errors"]:
        lines.append(f"  ! {safe(e['kind'])} in {safe(e['plugin'])} on {where(e['payload_id'])}: {safe(e['message'])}")
    return "\n".join(lines) + "\n\n"
