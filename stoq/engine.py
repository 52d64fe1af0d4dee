"""The scan step, written once and shared by the embedded mode and the cluster.

``Engine.analyze`` takes one payload: it hashes and types it, checks it against the scan's budget and
duplicates, archives it, plans its plugins, runs them, and returns its record, the errors, and the
children to analyse next. ``Engine.scan`` is the embedded loop over that step, breadth first, so
parents come before their children in ``results``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import magic
import yara

from stoq import metrics
from stoq.archive import ArchiveError, open_configured, put_where, read_from
from stoq.config import ConfigError, Settings
from stoq.dispatch import Dispatcher, Planned, bundled_dispatch_rules
from stoq.limits import Budget, Limits
from stoq.model import PayloadRecord, ScanErrorEntry, document, new_id, now_iso, text
from stoq.plugin import Payload, PluginOptions, ScanPlugin, ToolMissing
from stoq.registry import Registry, make_options
from stoq.runner import DECLINED, KIND_FLAGS, TOOL_MISSING, Outcome, run_plugin

log = logging.getLogger(__name__)

#: (sha256, plugin) -> (kind, message): plugin runs the supervisor already saw kill their process.
SkipMap = Mapping[tuple[str, str], tuple[str, str]]


class Activity:
    """Where a scan is, for a supervisor that may have to kill the process (no-op in-process)."""

    def enter(self, plugin: str, sha256: str) -> None:
        """Called before a plugin (or a core step such as ``libmagic``) runs on a payload."""

    def leave(self) -> None:
        """Called when it returns."""


@dataclass(slots=True)
class Pending:
    """A payload waiting to be analysed: its bytes and where it came from."""

    content: bytes | None
    filename: str | None
    parent_id: str | None = None
    depth: int = 0
    extracted_by: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-safe: checked by run_plugin, or read from JSON
    save: bool = True
    sha256: str | None = None  # set when the payload is in the archive already; ``content`` may then be None
    known_size: int = 0
    at: list[Any] | None = None  # where the archive holds it, when it can say (``archive.put_where``)
    known: bool = False  # ``content`` was read from the pack record of ``sha256``: not hashed again
    source_path: str | None = None  # the root's source path (``Payload.source_path``); None for children

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.known_size


@dataclass(slots=True)
class Started:
    """A payload after ``Engine.begin``: its record, the errors so far, and the plugins to run."""

    record: PayloadRecord
    errors: list[ScanErrorEntry]
    plan: list[Planned]
    content: bytes
    bytes_left: int | None = None  # of the scan's max_bytes, when the plan was made
    source_path: str | None = None

    def payload(self, planned: Planned) -> Payload:
        r = self.record
        return Payload(self.content, r.payload_id, r.filename, r.mime, r.sha256, r.depth, r.meta, planned.rules,
                       self.bytes_left, self.source_path)


@dataclass(slots=True)
class Analysis:
    """What ``Engine.analyze`` returns for one payload."""

    record: PayloadRecord
    errors: list[ScanErrorEntry]
    children: list[Pending]


_FLAG_PART = re.compile(r"[^a-z0-9_.-]+")


def normal_flag(flag: str) -> str:
    """A plugin's flag in the documented shape ``word(:word)*`` (lower case; other characters become -)."""
    parts = [_FLAG_PART.sub("-", part.lower()).strip("-") or "x" for part in str(flag).split(":")]
    parts[0] = parts[0].replace(".", "-")
    return ":".join(parts)


def flag_error(record: PayloadRecord, kind: str) -> None:
    """Adds to the payload the flag that an error of ``kind`` carries (``tool-missing``: ``tool:missing``),
    in both modes (the cluster's collector calls it for each error answer)."""
    flag = KIND_FLAGS.get(kind)
    if flag is not None and flag not in record.flags:
        record.flags.append(flag)


OCTET_STREAM = "application/octet-stream"
#: The plugin option every plugin has, owned by the framework: its time limit in seconds
#: (``-o yara.time_limit=30``, ``STOQ_YARA__TIME_LIMIT``); the global default is ``timeout``.
TIME_LIMIT = "time_limit"


def hashes(content: bytes, sha256: str | None = None) -> dict[str, Any]:
    """Size and hashes of a payload; ``sha256``, when the caller knows it, is not computed again."""
    return {
        "size": len(content),
        "md5": hashlib.md5(content).hexdigest(),
        "sha1": hashlib.sha1(content).hexdigest(),
        "sha256": sha256 or hashlib.sha256(content).hexdigest(),
        "sha512": hashlib.sha512(content).hexdigest(),
    }


def describe(content: bytes, mime_of: Callable[[bytes], str]) -> dict[str, Any]:
    """Size, hashes and MIME type of a payload."""
    return hashes(content) | {"mime": mime_of(content)}


def setup_failure(name: str, options: PluginOptions | None, exc: Exception) -> str:
    """Why a plugin could not start, in the user's words: a file that cannot be read is named with the
    option that names it (``setup failed: option yara.rules=/x: No such file or directory``)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        given = [k for k, v in (options.model_dump() if options else {}).items() if str(v) == str(exc.filename)]
        where = f"option {name}.{given[0]}={exc.filename}" if given else str(exc.filename)
        return f"setup failed: {where}: {exc.strerror}"
    return f"setup failed: {type(exc).__name__}: {exc}"


class Engine:
    """Runs scans with the installed plugins under one set of settings."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else Registry.discover()
        self.plugin_classes: dict[str, type[ScanPlugin]] = {
            cls.name: cls for cls in self.registry.scan_plugins()  # type: ignore[misc]
        }
        for name in settings.workers:
            self.registry.get(name)  # names a missing or broken plugin clearly
        self.options: dict[str, PluginOptions] = {}
        self.timeouts: dict[str, float] = {}
        for name, values in settings.plugins.items():
            if TIME_LIMIT in values:  # the framework's option, valid for every plugin
                values = dict(values)
                try:
                    self.timeouts[name] = float(values.pop(TIME_LIMIT))
                except ValueError:
                    raise ConfigError(f"{name}.{TIME_LIMIT} must be a number of seconds") from None
                if not self.timeouts[name] > 0:
                    raise ConfigError(f"{name}.{TIME_LIMIT} must be positive")
            if name in self.registry.entries:
                self.options[name] = make_options(self.registry.get(name), values)
            else:
                log.warning("options given for plugin %r, which is not installed", name)
        rules = settings.dispatch_rules or str(bundled_dispatch_rules())
        self.dispatcher = Dispatcher(self.plugin_classes, settings.workers, rules)
        self.limits = Limits.of(settings)
        self.archive = open_configured(settings, self.registry)
        try:
            self.archive.prepare()  # before any worker forks: they then only open it
        except (OSError, ArchiveError, sqlite3.Error) as exc:
            # display: no password in messages
            raise ConfigError(f"cannot use the archive {self.archive.display}: {exc}") from exc
        self._instances: dict[str, ScanPlugin] = {}
        self._setup_errors: dict[str, str] = {}
        self._missing_tools: set[str] = set()  # plugins whose setup raised ToolMissing
        self._magic = magic.Magic(mime=True)
        for name in settings.workers:  # fail before scanning on a bad worker configuration
            self.instance(name)
            if name in self._setup_errors:
                raise ConfigError(f"plugin {name!r} cannot start: {self._setup_errors[name]}")

    # -- plugins ---------------------------------------------------------------------------------

    def instance(self, name: str) -> ScanPlugin | None:
        """The configured, set-up instance of a plugin (None if its setup failed)."""
        plugin = self._instances.get(name)
        if plugin is None and name not in self._setup_errors:
            cls = self.plugin_classes[name]
            try:
                plugin = cls(self.options.get(name) or cls.Options())
                plugin.setup()
            except ToolMissing as exc:  # an error entry of its own kind on every payload, as in scan()
                self._setup_errors[name] = str(exc)
                self._missing_tools.add(name)
                return None
            except Exception as exc:  # recorded against every payload the plugin is dispatched to
                self._setup_errors[name] = setup_failure(name, self.options.get(name), exc)
                return None
            self._instances[name] = plugin
        return plugin

    def setup_error(self, name: str) -> str | None:
        """Why plugin ``name`` could not be set up (after ``instance`` returned None), else None."""
        return self._setup_errors.get(name)

    def worker_started(self) -> None:
        """Tells every set-up plugin that it now runs in a new worker process."""
        for plugin in self._instances.values():
            try:
                plugin.worker_started()
            except Exception:  # housekeeping: never a reason not to serve
                log.warning("worker_started of plugin %r failed", plugin.name, exc_info=True)

    def timeout_for(self, name: str) -> float:
        """Seconds ``name`` may spend on one payload: its ``time_limit`` option, else ``timeout``."""
        return self.timeouts.get(name, self.settings.timeout)

    def call_options(self, plugin: ScanPlugin, planned: Planned) -> PluginOptions:
        if not planned.overrides:
            return plugin.options
        known = {k: v for k, v in planned.overrides.items() if k in plugin.Options.model_fields}
        values = plugin.options.model_dump() | known
        return make_options(type(plugin), values)

    def _mime(self, content: bytes) -> str:
        return self._magic.from_buffer(content)

    # -- the scan step ---------------------------------------------------------------------------

    def analyze(self, item: Pending, budget: Budget, *, skip: SkipMap | None = None,
                activity: Activity = Activity(), left: int | None = None, wave: tuple[int, int] = (1, 0)
                ) -> Analysis:
        """Analyses one payload of a scan; ``budget`` carries the scan's limits and duplicates
        (``left`` and ``wave``: see ``begin``)."""
        started = self.begin(item, budget, skip=skip, activity=activity, left=left, wave=wave)
        record, errors = started.record, started.errors
        payload = None
        children: list[Pending] = []
        for planned in started.plan:
            name = planned.name
            if skip and (record.sha256, name) in skip:
                kind, message = skip[(record.sha256, name)]
                errors.append(ScanErrorEntry(record.payload_id, name, kind, message))
                continue
            if payload is None or planned.rules:
                payload = started.payload(planned)
            outcome = self.run_one(name, payload, planned, activity)
            if outcome is None:
                continue  # declined by accepts()
            if outcome.error is not None:
                errors.append(outcome.error)
                flag_error(record, outcome.error.kind)
                continue
            result = outcome.result
            assert result is not None
            found = [Pending(child.content, child.filename, meta=child.meta) for child in result.children]
            children.extend(self.absorb(record, name, planned, result.data, result.flags, found, budget,
                                        result.extracted_bytes))
        return Analysis(record, errors, children)

    def begin(self, item: Pending, budget: Budget, *, skip: SkipMap | None = None,
              activity: Activity = Activity(), quarantined: str | None = None, left: int | None = None,
              wave: tuple[int, int] = (1, 0)) -> Started:
        """The first half of the scan step: hashes, type, duplicates, archive, plugin plan.

        ``item.content`` may be None when the payload is already in the archive (the cluster's
        children): it is then read back by ``item.sha256``. ``quarantined`` (a message) says this
        payload took its worker down while being typed or dispatched: it is then neither typed by
        libmagic nor matched by the dispatch rules, and the message is a ``crash`` error.

        ``left`` (default: the budget's now) is what was left of the scan's byte budget when this
        payload's wave (its generation: the payloads of one depth, breadth first) began, and ``wave``
        that wave's (payloads, bytes). Once nothing is left no extractor runs (``limit:bytes``); else
        this payload's extractors may produce the larger of an equal part of it and a part in
        proportion to its size (``Payload.bytes_left``), so a wave spends at most twice what was left.
        Both modes decide so per wave, as the cluster must (a wave's payloads run at once), and cut
        the same bytes."""
        if quarantined is not None:
            skip = dict(skip or {}) | {(item.sha256 or "", "libmagic"): ("crash", quarantined)}
        payload_id = new_id()
        errors: list[ScanErrorEntry] = []
        content, known = item.content, item.known
        if content is None:
            assert item.sha256 is not None
            content, known = read_from(self.archive, item.sha256, item.at)  # else verified below, by hashing
        sha256 = item.sha256 if known and item.sha256 else hashlib.sha256(content).hexdigest()
        if item.sha256 is not None and sha256 != item.sha256:
            raise ArchiveError(f"payload {item.sha256} is damaged in the archive")
        if skip and (sha256, "libmagic") in skip:  # libmagic killed the worker on this payload before
            kind, message = skip[(sha256, "libmagic")]
            facts = hashes(content, sha256) | {"mime": OCTET_STREAM}
            errors.append(ScanErrorEntry(payload_id, "libmagic", kind, message))
        elif sha256 in budget.facts:  # the same bytes earlier in this scan: the same hashes and type
            facts = dict(budget.facts[sha256])
        else:
            facts = hashes(content, sha256)
            activity.enter("libmagic", sha256)
            try:
                facts["mime"] = self._mime(content)
                budget.facts[sha256] = facts
            except magic.MagicException as exc:
                facts["mime"] = OCTET_STREAM
                errors.append(ScanErrorEntry(payload_id, "libmagic", "error", str(exc)))
            finally:
                activity.leave()
        record = PayloadRecord(payload_id=payload_id, parent_id=item.parent_id, depth=item.depth,
                               filename=item.filename, extracted_by=item.extracted_by, meta=item.meta,
                               **facts)
        first = budget.first_seen(record.sha256, payload_id)
        if first is not None:
            record.duplicate_of = first
            return Started(record, errors, [], content)
        if item.save and item.sha256 is None:  # a payload given with its sha256 is archived already
            try:
                self.archive.put(record.sha256, content)
            except (OSError, ArchiveError, sqlite3.Error) as exc:  # the analysis goes on without a copy
                errors.append(ScanErrorEntry(payload_id, "archive", "error", f"{type(exc).__name__}: {exc}"))

        if item.depth > 0 and budget.overtime():  # listed, not analysed: the scan's time is up
            record.flags.append("limit:scan-time")
            return Started(record, errors, [], content)
        left = budget.left() if left is None else left
        exhausted = left <= 0  # every byte it may extract is spent: its extractors would waste time
        can_extract = item.depth < self.limits.max_depth and not exhausted
        if quarantined is not None:
            errors.append(ScanErrorEntry(payload_id, "dispatch", "error", f"dispatch rules skipped: {quarantined}"))
            plan, cut = self.dispatcher.plan(content, record.mime, can_extract, rules=False)
        else:
            try:
                plan, cut = self.dispatcher.plan(content, record.mime, can_extract)
            except yara.Error as exc:
                errors.append(ScanErrorEntry(payload_id, "dispatch", "error", f"dispatch rules failed: {exc}"))
                plan, cut = self.dispatcher.plan(content, record.mime, can_extract, rules=False)
        if cut:
            record.flags.append("limit:bytes" if exhausted else "limit:depth")
        count, size = wave
        part = max(left // max(count, 1), left * len(content) // size if size > 0 else 0)
        return Started(record, errors, plan, content, part, item.source_path)

    def absorb(self, record: PayloadRecord, name: str, planned: Planned, data: Any, flags: list[str],
               children: list[Pending], budget: Budget, extracted_bytes: int | None = None) -> list[Pending]:
        """The second half of the scan step, once per plugin that answered: its output and flags go
        on the record; the bytes it extracted and dropped (``extracted_bytes`` beyond its children's
        sizes) are spent from the scan's budget; its children are admitted into it (or flagged) and
        returned."""
        record.workers[name] = data  # JSON-safe already: checked by run_plugin, or read from JSON
        for flag in map(normal_flag, flags):
            if flag not in record.flags:
                record.flags.append(flag)
        if extracted_bytes:
            budget.spend(max(0, extracted_bytes - sum(child.size for child in children)))
        admitted: list[Pending] = []
        for child in children:
            refused = budget.admit(record.depth + 1, child.size)
            if refused is not None:
                if refused not in record.flags:
                    record.flags.append(refused)
                continue
            child.parent_id, child.depth, child.extracted_by, child.save = (
                record.payload_id, record.depth + 1, name, planned.save)
            admitted.append(child)
        return admitted

    def run_one(self, name: str, payload: Payload, planned: Planned,
                activity: Activity = Activity()) -> Outcome | None:
        """Runs one plugin on one payload: set-up errors, ``accepts``, per-call options, the soft time
        limit and error capture. None when the plugin declines the payload."""
        plugin = self.instance(name)
        if plugin is None:
            kind = TOOL_MISSING if name in self._missing_tools else "error"
            return Outcome(None, ScanErrorEntry(payload.payload_id, name, kind, self._setup_errors[name]), 0.0)

        def call() -> Any:  # all under the time limit and the error capture: accepts() and the options too
            if not plugin.accepts(payload):
                return DECLINED
            return plugin.scan(payload, self.call_options(plugin, planned))

        activity.enter(name, payload.sha256)
        try:
            outcome = run_plugin(name, call, payload.payload_id, self.timeout_for(name))
        finally:
            activity.leave()
        if outcome is not None:
            metrics.plugin_run(name, outcome.seconds)
        return outcome

    def run_on(self, name: str, ref: dict[str, Any], activity: Activity = Activity()) -> dict[str, Any]:
        """Runs one plugin on an archived payload given by reference (the Celery adapter's step).
        Children are archived; the answer holds references to them, never bytes."""
        # Not hashed again: the publisher checked these bytes against their sha256 when it began them.
        content, _ = read_from(self.archive, ref["sha256"], ref.get("at"))
        payload = Payload(content, ref["payload_id"], ref.get("filename"), ref["mime"], ref["sha256"],
                          ref.get("depth", 0), ref.get("meta") or {}, tuple(ref.get("rules", ())),
                          ref.get("bytes_left"), ref.get("source_path"))
        answer: dict[str, Any] = {"payload_id": ref["payload_id"]}
        planned = Planned(name, dict(ref.get("overrides") or {}), tuple(ref.get("rules", ())), ref.get("save", True))
        outcome = self.run_one(name, payload, planned, activity)
        if outcome is None:
            answer["skipped"] = True
            return answer
        if outcome.error is not None:
            answer["error"] = outcome.error.as_dict()
            return answer
        result = outcome.result
        assert result is not None
        children = []
        for child in result.children:
            sha256 = hashlib.sha256(child.content).hexdigest()
            at = put_where(self.archive, sha256, child.content)  # always: the next wave reads it (even save=False)
            children.append({"sha256": sha256, "size": len(child.content), "filename": child.filename,
                             "meta": child.meta, "at": at})  # (checked by run_plugin: JSON-safe)
        answer.update(result=result.data, flags=[normal_flag(f) for f in result.flags], children=children)
        if result.extracted_bytes is not None:
            answer["extracted_bytes"] = result.extracted_bytes
        return answer

    def scan(self, content: bytes, filename: str | None, source: dict[str, Any], *,
             skip: SkipMap | None = None, activity: Activity = Activity(), scan_id: str | None = None,
             archived: str | None = None, keep: Callable[[PayloadRecord, bytes], None] | None = None
             ) -> dict[str, Any]:
        """Scans one root payload and everything extracted from it; returns the scan document.

        ``archived``: the sha256 under which the caller has already put ``content`` in a pack and
        read it back with ``PackArchive.read_record`` (the embedded pool's worker does): it is then
        neither hashed again nor stored again. ``keep``: called with each payload's record and bytes
        as it is analysed (``stoq shell`` keeps the bytes of the tree it lets the analyst walk)."""
        scan_id = scan_id or new_id()
        date = now_iso()
        budget = Budget(self.limits)
        wave = [Pending(content, filename, sha256=archived, known=archived is not None,
                        source_path=source.get("path") if isinstance(source.get("path"), str) else None)]
        results: list[PayloadRecord] = []
        errors: list[ScanErrorEntry] = []
        while wave:  # breadth first, one generation (the cluster's wave) at a time
            left, children, shape = budget.left(), [], (len(wave), sum(item.size for item in wave))
            for item in wave:
                analysis = self.analyze(item, budget, skip=skip, activity=activity, left=left, wave=shape)
                results.append(analysis.record)
                if keep is not None and item.content is not None:
                    keep(analysis.record, item.content)
                errors.extend(analysis.errors)
                children.extend(analysis.children)
            wave = children
        return document(scan_id, date, source, results, errors)

    def scan_oversized(self, path: Path, source: dict[str, Any], scan_id: str | None = None) -> dict[str, Any]:
        """The document of an input larger than ``max_file_bytes`` (see ``oversized_record``)."""
        return document(scan_id or new_id(), now_iso(), source, [oversized_record(path, self._mime)], [])

    def close(self) -> None:
        """Flushes and releases what the engine holds (the archive's pack and index)."""
        self.archive.close()


def oversized_record(path: Path, mime_of: Callable[[bytes], str]) -> PayloadRecord:
    """The record of an input larger than ``max_file_bytes``: hashed in chunks, typed from its first
    MiB, flagged ``limit:file-bytes``; no plugin runs and nothing is archived."""
    digests = [hashlib.md5(), hashlib.sha1(), hashlib.sha256(), hashlib.sha512()]
    size = 0
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
        chunk = head
        while chunk:
            size += len(chunk)
            for h in digests:
                h.update(chunk)
            chunk = handle.read(1 << 20)
    return PayloadRecord(payload_id=new_id(), parent_id=None, depth=0, filename=text(path.name), extracted_by=None,
                         meta={}, size=size, md5=digests[0].hexdigest(), sha1=digests[1].hexdigest(),
                         sha256=digests[2].hexdigest(), sha512=digests[3].hexdigest(), mime=mime_of(head),
                         flags=["limit:file-bytes"])
