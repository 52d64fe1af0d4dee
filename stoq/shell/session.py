"""The state of ``stoq shell`` and its operations, as plain methods (no terminal, testable alone).

A :class:`Session` holds the settings, the embedded engine built from them (the same ``Engine`` as
``stoq scan``: its plugin set-up, time limits, error capture and dispatch), the analyst's option
changes, and a tree of :class:`Node`: the payload read from disk and the children that ``run`` or
``scan`` extracted from it, with their bytes, so that the analyst can step into one and work on it.
Every failure the analyst should see is a :class:`ShellError` with a one-line message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stoq.archive import read_input
from stoq.config import ConfigError, Settings, did_you_mean
from stoq.dispatch import Planned
from stoq.engine import Engine, TIME_LIMIT, describe, normal_flag
from stoq.limits import Budget
from stoq.model import PayloadRecord, new_id
from stoq.plugin import SCAN_CATEGORIES, Payload, Plugin
from stoq.registry import Registry, make_options, path_options

#: The order ``list`` shows categories in (as ``stoq list``).
CATEGORY_ORDER = ("worker", "carver", "extractor", "decoder", "reader", "connector", "archiver", "source")


class ShellError(Exception):
    """Something the analyst asked for that cannot be done; its message is one line for the terminal."""


@dataclass(eq=False)
class Node:
    """A payload in the shell's tree: its bytes, what is known of them, and what was found in it."""

    content: bytes
    filename: str | None
    facts: dict[str, Any]  # size, md5, sha1, sha256, sha512, mime
    parent: Node | None = None
    extracted_by: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # plugin -> its output on this payload
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"plugin", "kind", "message"}
    children: list[Node] = field(default_factory=list)
    duplicate: bool = False  # the same bytes appeared earlier in the scan that found it
    document: dict[str, Any] | None = None  # the last `scan` of this payload
    source: str | None = None  # the path it was read from (the root only)
    payload_id: str = field(default_factory=new_id)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else self.parent.depth + 1

    @property
    def name(self) -> str:
        return self.filename if self.filename is not None else "-"

    def index(self) -> int | None:
        """Its number among its parent's children (None for the file read, or once replaced)."""
        if self.parent is None:
            return None
        return next((i for i, c in enumerate(self.parent.children) if c is self), None)

    def path(self) -> list[Node]:
        """The nodes from the root to this one."""
        nodes: list[Node] = []
        node: Node | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def add_flags(self, flags: list[str]) -> None:
        for flag in map(normal_flag, flags):
            if flag not in self.flags:
                self.flags.append(flag)


@dataclass(frozen=True, slots=True)
class OptionInfo:
    """One option of a plugin as ``usage`` shows it."""

    name: str
    type: str
    default: Any
    value: Any  # what this session will use
    description: str


class Session:
    """One analyst's shell: settings, engine, option changes and the payload tree."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry.discover()
        self._engine: Engine | None = None
        self._magic: Any = None
        self.root: Node | None = None
        self.current: Node | None = None

    # -- the engine ------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The embedded engine under the session's settings, built on first use and again after
        ``set`` changed an option."""
        if self._engine is None:
            try:
                self._engine = Engine(self.settings, self.registry)
            except ConfigError as exc:
                raise ShellError(str(exc)) from None
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- plugins ---------------------------------------------------------------------------------

    def plugins(self) -> list[tuple[str, list[tuple[str, str, str]]]]:
        """Installed plugins by category: [(category, [(name, version, description or load error)])]."""
        by_category: dict[str, list[tuple[str, str, str]]] = {}
        for entry in self.registry.entries.values():
            cls = entry.cls
            row = (entry.name, cls.version, cls.summary()) if cls else (entry.name, "ERROR", entry.error or "")
            by_category.setdefault(entry.category if cls else "failed to load", []).append(row)
        order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
        return [(c, sorted(by_category[c])) for c in sorted(by_category, key=lambda c: order.get(c, 99))]

    def plugin_names(self) -> list[str]:
        return sorted(self.registry.entries)

    def plugin(self, name: str) -> type[Plugin]:
        if name not in self.registry.entries:
            raise ShellError(f"no plugin {name!r} is installed{did_you_mean(name, self.registry.entries)} (see `list`)")
        try:
            return self.registry.get(name)
        except ConfigError as exc:
            raise ShellError(str(exc)) from None

    def usage(self, name: str) -> tuple[type[Plugin], list[OptionInfo]]:
        """A plugin and its options: type, default and the value this session uses."""
        from stoq.cli.admin import type_name

        cls = self.plugin(name)
        given = self.settings.plugins.get(name, {})
        try:  # the values as the plugin will see them (text from stoq.toml or `set`, typed)
            current = make_options(cls, {k: v for k, v in given.items() if k != TIME_LIMIT})
        except ConfigError as exc:
            raise ShellError(str(exc)) from None
        options = []
        for key, info in cls.Options.model_fields.items():
            default = info.get_default(call_default_factory=True)
            options.append(OptionInfo(key, type_name(info.annotation), default, getattr(current, key),
                                      info.description or ""))
        options.append(OptionInfo(TIME_LIMIT, "number", None, given.get(TIME_LIMIT),
                                  "seconds it may spend on one payload (default: the timeout setting)"))
        return cls, options

    def load(self, name: str) -> type[Plugin]:
        """Sets a scan plugin up now (as a scan would), so that a bad option or a missing rule file
        is said at once."""
        cls = self.plugin(name)
        if cls.category not in SCAN_CATEGORIES:
            return cls  # connectors and archivers are not run on a payload: nothing to set up here
        engine = self.engine
        if engine.instance(name) is None:
            raise ShellError(f"plugin {name!r} cannot start: {engine.setup_error(name)}")
        return cls

    def set_option(self, spec: str, value: str) -> Any:
        """``PLUGIN.OPTION VALUE``: validated through the plugin's Options model; returns the value
        as the plugin will see it. The engine is built again on next use (set-up reads options)."""
        plugin, dot, option = spec.partition(".")
        if not dot or not plugin or not option:
            raise ShellError(f"{spec!r}: expected PLUGIN.OPTION (e.g. yara.rules)")
        cls = self.plugin(plugin)
        values = dict(self.settings.plugins.get(plugin, {}))
        if option == TIME_LIMIT:
            try:
                seconds = float(value)
            except ValueError:
                raise ShellError(f"{plugin}.{TIME_LIMIT} must be a number of seconds") from None
            if not seconds > 0:
                raise ShellError(f"{plugin}.{TIME_LIMIT} must be positive")
            values[TIME_LIMIT], shown = seconds, seconds
        else:
            given: Any = value
            if option in path_options(cls) and value:
                given = str(Path(value).expanduser().absolute())  # as the CLI does: where the analyst is
            values[option] = given
            try:
                checked = make_options(cls, {k: v for k, v in values.items() if k != TIME_LIMIT})
            except ConfigError as exc:
                raise ShellError(str(exc)) from None
            shown = getattr(checked, option)
        self.settings = self.settings.model_copy(update={"plugins": {**self.settings.plugins, plugin: values}})
        self.close()
        return shown

    # -- the payload tree ------------------------------------------------------------------------

    def node(self) -> Node:
        if self.current is None:
            raise ShellError("no payload: `read PATH` first")
        return self.current

    def _facts(self, content: bytes) -> dict[str, Any]:
        if self._magic is None:
            import magic

            self._magic = magic.Magic(mime=True)
        return describe(content, self._magic.from_buffer)

    def read(self, path: str) -> Node:
        """Makes the file at ``path`` the current payload (a new tree); refuses a file larger than
        the ``max_file_bytes`` setting."""
        limit = self.settings.max_file_bytes
        where = os.path.expanduser(path)
        try:
            content = read_input(where, limit)
        except OSError as exc:
            raise ShellError(f"cannot read {path}: {exc.strerror or exc}") from None
        if content is None:
            raise ShellError(f"{path} is larger than max_file_bytes ({limit} bytes): not read")
        node = Node(content, os.path.basename(path), self._facts(content), source=os.path.abspath(where))
        self.root = self.current = node
        return node

    def run(self, name: str) -> tuple[Node, Any]:
        """Runs one plugin on the current payload, as a scan would (its options, set-up, time limit
        and error capture); its output and flags go on the payload, its children replace those it
        extracted before. Returns the payload and the plugin's output. A plugin's error is a
        :class:`ShellError` (and stays in the payload's errors)."""
        node = self.node()
        cls = self.plugin(name)
        if cls.category not in SCAN_CATEGORIES:
            raise ShellError(f"{name!r} is a {cls.category}: only {', '.join(SCAN_CATEGORIES)} plugins run on a payload")
        engine = self.engine
        payload = Payload(node.content, node.payload_id, node.filename, node.facts["mime"], node.facts["sha256"],
                          node.depth, node.meta, (), engine.limits.max_bytes)
        outcome = engine.run_one(name, payload, Planned(name))
        if outcome is None:
            raise ShellError(f"{name} declined this payload (its accepts() said no: wrong type or too large)")
        if outcome.error is not None:
            error = outcome.error
            node.errors.append({"plugin": name, "kind": error.kind, "message": error.message})
            raise ShellError(f"{name} failed ({error.kind}): {error.message}")
        result = outcome.result
        assert result is not None
        node.outputs[name] = result.data
        node.add_flags(result.flags)
        budget = Budget(engine.limits)
        kept = [c for c in node.children if c.extracted_by != name]
        for child in result.children:
            refused = budget.admit(node.depth + 1, len(child.content))
            if refused is not None:
                node.add_flags([refused])
                continue
            kept.append(Node(child.content, child.filename, self._facts(child.content), node, name, child.meta))
        node.children = kept
        return node, result.data

    def scan(self) -> dict[str, Any]:
        """The whole dispatch on the current payload, as ``stoq scan`` runs it (the session's
        workers, the dispatch rules, the limits); the payload's children become the scan's tree.
        Returns the scan document (not written to the result store)."""
        node = self.node()
        contents: dict[str, bytes] = {}

        def keep(record: PayloadRecord, content: bytes) -> None:
            contents[record.payload_id] = content

        path = node.path()
        source = {"path": path[0].source, "shell": [n.index() for n in path[1:]]}
        doc = self.engine.scan(node.content, node.filename, source, keep=keep)
        by_parent: dict[str | None, list[dict[str, Any]]] = {}
        for record in doc["results"]:
            by_parent.setdefault(record["parent_id"], []).append(record)
        errors: dict[str, list[dict[str, Any]]] = {}
        for error in doc["errors"]:
            errors.setdefault(error["payload_id"], []).append(
                {"plugin": error["plugin"], "kind": error["kind"], "message": error["message"]})
        root = doc["results"][0]

        def fill(target: Node, record: dict[str, Any]) -> None:
            target.outputs.update(record["workers"])
            target.add_flags(record["flags"])
            target.errors.extend(e for e in errors.get(record["payload_id"], []) if e not in target.errors)
            target.children = []
            for child in by_parent.get(record["payload_id"], []):
                facts = {k: child[k] for k in ("size", "md5", "sha1", "sha256", "sha512", "mime")}
                made = Node(contents[child["payload_id"]], child["filename"], facts, target, child["extracted_by"],
                            child["meta"], duplicate=child["duplicate_of"] is not None)
                target.children.append(made)
                fill(made, child)

        fill(node, root)
        node.facts["mime"] = root["mime"]
        node.document = doc
        return doc

    def child(self, index: int) -> Node:
        node = self.node()
        if not 0 <= index < len(node.children):
            count = len(node.children)
            raise ShellError(f"no child {index}: this payload has {count} (0 to {count - 1})" if count else
                             f"no child {index}: this payload has none (`scan` or `run` an extractor first)")
        return node.children[index]

    def cd(self, where: str) -> Node:
        """``N`` steps into child N, ``..`` back to the parent, ``/`` to the file read."""
        node = self.node()
        if where == "..":
            if node.parent is None:
                raise ShellError("already at the file read (the root)")
            self.current = node.parent
        elif where == "/":
            self.current = self.root
        else:
            self.current = self.child(parse_int(where, "child number"))
        return self.node()

    def save(self, path: str, index: int | None = None) -> tuple[Node, Path]:
        """Writes the current payload (or its child ``index``) to ``path``; never overwrites
        anything there, a symbolic link included."""
        node = self.node() if index is None else self.child(index)
        target = Path(path).expanduser()
        try:
            with open(target, "xb") as out:
                out.write(node.content)
        except FileExistsError:
            raise ShellError(f"{path} exists: not overwritten") from None
        except OSError as exc:
            raise ShellError(f"cannot write {path}: {exc.strerror or exc}") from None
        return node, target


def parse_int(text: str, what: str) -> int:
    """A non-negative number given as decimal or with a 0x/0o/0b prefix."""
    try:
        value = int(text, 0)
    except ValueError:
        raise ShellError(f"{what} {text!r} is not a number") from None
    if value < 0:
        raise ShellError(f"{what} must not be negative")
    return value


__all__ = ["CATEGORY_ORDER", "Node", "OptionInfo", "Session", "ShellError", "parse_int"]
