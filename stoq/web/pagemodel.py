"""What the results pages show of a scan document: the payload tree, each payload's YARA hits, errors
and duplicates, read from the document alone (docs/results.md), ready for the templates.

Nothing here escapes: the templates' autoescape does (HTML), after :func:`shown` has made visible the
characters that would change how a line reads (bidi overrides, controls), as the CLI's table does.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import orjson

from stoq.terminal import safe

__all__ = ["Node", "PageTree", "plugin_json", "page_tree", "shown", "size_text"]

#: A plugin's output longer than this (as indented JSON) is cut on the page; the whole document stays
#: one click away (the scan's JSON).
MAX_JSON_CHARS = 200_000
#: Characters written as an escape inside the JSON shown on a page (as :func:`stoq.terminal.safe`
#: hides them from a terminal): controls, format characters (bidi overrides), surrogates, private use,
#: unassigned, line and paragraph separators.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def shown(value: object) -> str:
    """A value a file controls as text that reads the same in a page as in the CLI: controls, bidi
    overrides and other invisible characters as escapes (``\\u202e``); HTML escaping is the
    template's."""
    return safe(value if value is not None else "-")


def shown_lines(value: object) -> str:
    """A message of several lines (a failed scan's stderr) with each line as :func:`shown` makes it."""
    return "\n".join(shown(line) for line in str(value).split("\n"))


def size_text(size: int) -> str:
    """``639 B``, ``4.0 KiB``, ``1.5 MiB``: a payload's size for people."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _visible(char: str) -> str:
    if char == "\n" or unicodedata.category(char) not in _HIDDEN:
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def plugin_json(output: Any) -> tuple[str, bool]:
    """A plugin's output as indented JSON for a ``<pre>`` (invisible characters escaped, as JSON
    escapes), and whether it was cut at :data:`MAX_JSON_CHARS`."""
    text = orjson.dumps(output, option=orjson.OPT_INDENT_2).decode()
    cut = len(text) > MAX_JSON_CHARS
    if cut:
        text = text[:MAX_JSON_CHARS]
    if not text.isascii():
        text = "".join(map(_visible, text))
    return text, cut


@dataclass
class Node:
    """One payload of the document, with what its pages show."""

    payload: dict[str, Any]
    index: int  #: position in ``results`` (0: the root)
    path: str  #: names from the root, ``invoice.zip > attachment.zip > run.ps1.txt``
    children: list[Node] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    duplicate: Node | None = None  #: the first occurrence, when this payload is a duplicate
    parent: Node | None = None

    @property
    def id(self) -> str:
        return str(self.payload["payload_id"])

    @property
    def name(self) -> str:
        return shown(self.payload["filename"])

    @property
    def yara_rules(self) -> list[str]:
        """The names of the YARA rules that matched, in the plugin's order."""
        return [str(m.get("rule", "?")) for m in self.yara_matches]

    @property
    def yara_matches(self) -> list[dict[str, Any]]:
        yara = self.payload["workers"].get("yara")
        matches = yara.get("matches") if isinstance(yara, dict) else None
        return [m for m in matches if isinstance(m, dict)] if isinstance(matches, list) else []


@dataclass
class PageTree:
    """A document as its pages show it (unlike :func:`stoq.web.service.tree_of`, the API's tree, each
    node keeps its whole payload, its parent and its path of names): the tree's roots (one, in a valid document), every node by
    payload id and in document order, and the scan's totals."""

    document: dict[str, Any]
    nodes: list[Node]
    by_id: dict[str, Node]

    @property
    def root(self) -> Node:
        return self.nodes[0]

    @property
    def roots(self) -> list[Node]:
        return [n for n in self.nodes if n.parent is None]

    @property
    def flag_count(self) -> int:
        return sum(len(n.payload["flags"]) for n in self.nodes)

    @property
    def yara_count(self) -> int:
        return sum(len(n.yara_matches) for n in self.nodes)

    @property
    def duplicate_count(self) -> int:
        return sum(1 for n in self.nodes if n.payload["duplicate_of"] is not None)

    def unplaced_errors(self) -> list[dict[str, Any]]:
        """Errors whose payload id is in no result (a ``stoq``-level failure, say)."""
        return [e for e in self.document["errors"] if e["payload_id"] not in self.by_id]


def page_tree(document: dict[str, Any]) -> PageTree:
    """The tree of ``document`` (a valid scan document: parents before children)."""
    nodes: list[Node] = []
    by_id: dict[str, Node] = {}
    for index, payload in enumerate(document["results"]):
        parent = by_id.get(payload["parent_id"]) if payload["parent_id"] is not None else None
        name = shown(payload["filename"])
        node = Node(payload, index, f"{parent.path} > {name}" if parent else name, parent=parent)
        if parent is not None:
            parent.children.append(node)
        nodes.append(node)
        by_id[node.id] = node
    for node in nodes:
        original = node.payload["duplicate_of"]
        node.duplicate = by_id.get(original) if original is not None else None
    for error in document["errors"]:
        owner = by_id.get(error["payload_id"])
        if owner is not None:
            owner.errors.append(error)
    return PageTree(document, nodes, by_id)
