"""The ``yara`` worker: matches payloads against YARA rules (a file, a directory, or an index file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yara
from pydantic import Field, field_validator

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin, time_left
from stoq_plugins._yararules import BUILTIN_EXTERNALS, RuleError, RuleSet, externals_for, parse_externals

#: The rules used when no ``rules`` option is given: a few generic indicators.
DEFAULT_RULES = Path(__file__).with_name("rules") / "default.yar"
#: Longest matched data reported per string instance, in bytes.
MAX_DATA = 64
#: Seconds YARA's own timeout is set below the framework's time limit, so that YARA stops first.
MARGIN = 2


class YaraPlugin(WorkerPlugin):
    """Matches payloads against YARA rules and reports the rules, tags, meta and matched strings.

    Output: ``{"matches": [{"rule", "namespace", "tags", "meta", "strings": [{"identifier", "offset",
    "data"}]}]}``, ``data`` being the matched bytes (at most 64). Flags: ``limit:yara-strings`` when
    ``max_strings`` cut a rule's strings, ``limit:yara-matches`` when YARA itself stopped recording one,
    ``limit:yara-time`` when YARA's timeout stopped the match (no matches then), ``yara:stale-rules``
    when the rule files changed into rules that do not compile (the previous rules were used).
    """

    name = "yara"
    files = ("rules",)
    version = "1.1"

    class Options(PluginOptions):
        rules: Path = Field(DEFAULT_RULES, description="YARA rule file, directory of rule files (*.yar, *.yara; "
                            "one namespace per file), or index file of includes.")
        timeout: int = Field(30, ge=1, description="YARA's own match time limit, in seconds (lowered to stay "
                             "under the plugin's time limit).")
        max_strings: int = Field(32, ge=0, description="Most string matches reported per rule.")
        recheck: float = Field(10.0, ge=0, description="Seconds between checks of the rule files for changes "
                               "(they are recompiled when changed).")
        externals: dict[str, int | bool | str] = Field(
            {}, description="More external variables the rules use, with their default values "
            "(NAME=VALUE,...: an integer, true or false, else text).")

        @field_validator("externals", mode="before")
        @classmethod
        def _pairs(cls, value: Any) -> Any:
            return parse_externals(value) if isinstance(value, str) else value

    def __init__(self, options: PluginOptions | None = None) -> None:
        super().__init__(options)
        self._sets: dict[tuple[Path, tuple[tuple[str, Any], ...]], RuleSet] = {}

    def setup(self) -> None:
        self._rules(self.options)

    def _rules(self, options: Options) -> RuleSet:
        """The compiled rules of ``options.rules`` (compiled on first use, then rechecked on disk)."""
        key = (options.rules, tuple(sorted(options.externals.items())))
        ruleset = self._sets.get(key)
        if ruleset is None:
            taken = sorted(set(options.externals) & set(BUILTIN_EXTERNALS))
            if taken:
                raise RuleError(f"externals {', '.join(taken)} are built in: they cannot be redeclared")
            defaults = dict.fromkeys(BUILTIN_EXTERNALS, "") | dict(options.externals)
            ruleset = self._sets[key] = RuleSet(options.rules, defaults)
        else:
            ruleset.refresh(options.recheck)
        return ruleset

    def scan(self, payload: Payload, options: Options) -> Result:
        ruleset = self._rules(options)
        flags: list[str] = ["yara:stale-rules"] if ruleset.stale else []

        def warned(kind: int, _detail: Any) -> int:
            if kind == yara.CALLBACK_TOO_MANY_MATCHES and "limit:yara-matches" not in flags:
                flags.append("limit:yara-matches")  # YARA stopped recording a string's matches
            return yara.CALLBACK_CONTINUE

        left = time_left()
        timeout = options.timeout if left is None else max(1, min(options.timeout, int(left) - MARGIN))
        try:
            found = ruleset.rules.match(data=payload.content, timeout=timeout, warnings_callback=warned,
                                        externals=externals_for(payload.filename, payload.mime, payload.source_path))
        except yara.TimeoutError:
            return Result(data={"matches": [], "timeout": timeout}, flags=[*flags, "limit:yara-time"])
        cap, capped = options.max_strings, False
        matches: list[dict[str, Any]] = []
        for match in found:
            strings: list[dict[str, Any]] = []
            for string in match.strings:
                for instance in string.instances:
                    if len(strings) >= cap:
                        capped = True
                        break
                    strings.append({"identifier": string.identifier, "offset": instance.offset,
                                    "data": instance.matched_data[:MAX_DATA]})
            matches.append({"rule": match.rule, "namespace": match.namespace, "tags": match.tags,
                            "meta": match.meta, "strings": strings})
        if capped:
            flags.append("limit:yara-strings")
        return Result(data={"matches": matches}, flags=flags)
