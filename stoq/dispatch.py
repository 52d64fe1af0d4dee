"""Which plugins run on a payload.

Three sources, merged in this order (a plugin runs at most once per payload):
1. the ``workers`` list (the worker set: ``--workers``, else the ``workers`` setting, whose default is
   ``stoq.config.DEFAULT_WORKERS``): a worker in it runs on every payload, root and children, unless it
   declares ``mimes``: it is then routed (2.), run on payloads of those types only;
2. MIME routing: a carver's, extractor's, decoder's or reader's ``mimes`` names the types routed to it
   without being asked; a worker's ``mimes`` route it only when it is in the worker set (a worker the
   user did not select never runs through MIME routing). A ``mimes`` entry ``type/*`` matches every
   subtype (``text/*``);
3. YARA dispatch rules (stoQ's convention): a matching rule's meta ``plugin = "carver:pe"`` (or a
   comma list of ``category:name`` / ``name``) sends the payload to those plugins; ``save = "False"``
   means what that plugin extracts is not written to the archive; every other meta key that names an
   option of the plugin reaches it as that option for this call (other keys are ignored). When a
   string of the rule matched through YARA's ``xor`` modifier, the key YARA reports becomes the
   plugin's ``key`` option (if it has one and the meta does not set it).

A plugin whose ``accepts()`` declines the payload is then skipped (not an error). At the depth limit,
plugins that only produce children (carvers, extractors, decoders, readers) are not run and the payload
is flagged ``limit:depth``; dispatch rules are not even evaluated there when every plugin they name is
of those categories, which keeps the common ``--max-depth 0`` case as cheap as the plugins themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yara

from stoq.config import ConfigError
from stoq.plugin import EXTRACTING_CATEGORIES, ScanPlugin

log = logging.getLogger(__name__)

def bundled_dispatch_rules() -> Path:
    """The dispatch rule file shipped with the bundled plugins (``stoq_plugins/rules/dispatch.yar``)."""
    import stoq_plugins

    return Path(stoq_plugins.__file__).resolve().parent / "rules" / "dispatch.yar"


@dataclass(slots=True)
class Planned:
    """One plugin to run on a payload, with per-call options from dispatch rules."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    rules: tuple[str, ...] = ()
    save: bool = True


@dataclass(slots=True)
class _RuleTarget:
    rule: str
    plugins: tuple[str, ...]
    overrides: dict[str, Any]
    save: bool


def reported_xor_key(match: yara.Match) -> int | None:
    """The key YARA reports for a string matched with the ``xor`` modifier (the first non-zero one)."""
    for string in match.strings:
        for instance in string.instances:
            key = getattr(instance, "xor_key", 0)
            if key:
                return int(key)
    return None


class Dispatcher:
    """Plans the plugins for each payload from the workers list, MIME routing and dispatch rules."""

    RULE_TIMEOUT = 30  # seconds, YARA's own limit for one dispatch match

    def __init__(self, plugins: Mapping[str, type[ScanPlugin]], workers: list[str], rules_path: str | None) -> None:
        self.plugins = plugins
        for name in workers:
            if name not in plugins:
                raise ConfigError(f"unknown worker plugin {name!r} (see `stoq list`)")
        #: Workers run on every payload: the selected ones that declare no ``mimes``.
        self.workers = [name for name in workers if not plugins[name].mimes]
        self.by_mime: dict[str, list[str]] = {}
        self.by_prefix: dict[str, list[str]] = {}  # "text/" -> plugins whose mimes hold "text/*"
        routed = [name for name in workers if plugins[name].mimes]  # the worker set's order first
        routed += [name for name, cls in plugins.items() if cls.category != "worker" and cls.mimes]
        for name in routed:
            for mime in plugins[name].mimes:
                if mime.endswith("/*"):
                    self.by_prefix.setdefault(mime[:-1], []).append(name)
                else:
                    self.by_mime.setdefault(mime, []).append(name)
        self._routes: dict[str, tuple[str, ...]] = {}
        self.rules: yara.Rules | None = None
        self.rule_targets: dict[str, _RuleTarget] = {}
        self.rules_only_extract = True
        self._static: dict[tuple[str, bool], tuple[list[Planned], bool]] = {}
        if rules_path and rules_path.lower() != "none":
            self._load_rules(rules_path)

    def _load_rules(self, path: str) -> None:
        try:
            self.rules = yara.compile(filepath=path)
        except yara.Error as exc:
            raise ConfigError(f"cannot compile dispatch rules {path}: {exc}") from exc
        for rule in self.rules:
            meta = dict(rule.meta)
            spec = str(meta.pop("plugin", "")).strip()
            save = str(meta.pop("save", "True")).strip().lower() not in ("false", "0", "no")
            names = []
            for part in filter(None, (p.strip() for p in spec.split(","))):
                category, _, name = part.rpartition(":")
                cls = self.plugins.get(name)
                if cls is None:
                    log.warning("dispatch rule %s names plugin %r, which is not installed", rule.identifier, name)
                    continue
                if category and category != cls.category:
                    log.warning("dispatch rule %s says %s, but %r is a %s", rule.identifier, part, name, cls.category)
                names.append(name)
                if cls.category not in EXTRACTING_CATEGORIES:
                    self.rules_only_extract = False
            if names:
                self.rule_targets[rule.identifier] = _RuleTarget(rule.identifier, tuple(names), meta, save)

    def routes(self, mime: str) -> tuple[str, ...]:
        """The plugins MIME routing sends a payload of type ``mime`` to (exact types, then ``type/*``)."""
        found = self._routes.get(mime)
        if found is None:
            names = list(self.by_mime.get(mime, ()))
            for prefix, more in self.by_prefix.items():
                if mime.startswith(prefix):
                    names += more
            found = self._routes[mime] = tuple(dict.fromkeys(names))
        return found

    def plan(self, content: bytes, mime: str, can_extract: bool, *, rules: bool = True) -> tuple[list[Planned], bool]:
        """The plugins to run, and whether child-producing plugins were left out at the depth limit.

        Raises ``yara.Error`` when the dispatch rules fail on this payload; the caller records the
        error and plans again with ``rules=False`` (the workers list and MIME routing)."""
        use_rules = rules and bool(self.rule_targets) and (can_extract or not self.rules_only_extract)
        if not use_rules:  # the plan depends on the MIME type alone: build it once per type
            cached = self._static.get((mime, can_extract))
            if cached is None:
                cached = self._static[(mime, can_extract)] = self._plan(content, mime, can_extract, False)
            return cached[0][:], cached[1]
        return self._plan(content, mime, can_extract, True)

    def _plan(self, content: bytes, mime: str, can_extract: bool, use_rules: bool) -> tuple[list[Planned], bool]:
        planned: dict[str, Planned] = {name: Planned(name) for name in self.workers}
        for name in self.routes(mime):
            planned.setdefault(name, Planned(name))
        if use_rules:
            assert self.rules is not None
            for match in self.rules.match(data=content, timeout=self.RULE_TIMEOUT):
                target = self.rule_targets.get(match.rule)
                if target is None:
                    continue
                xor_key = reported_xor_key(match)
                for name in target.plugins:
                    entry = planned.setdefault(name, Planned(name))
                    if xor_key is not None and "key" in self.plugins[name].Options.model_fields:
                        entry.overrides.setdefault("key", xor_key)  # the key YARA found for an xor string
                    entry.overrides.update(target.overrides)
                    entry.rules += (match.rule,)
                    entry.save = entry.save and target.save
        if can_extract:
            return list(planned.values()), False
        kept = [p for p in planned.values() if self.plugins[p.name].category not in EXTRACTING_CATEGORIES]
        return kept, len(kept) != len(planned)
