"""The ``yara`` worker: matches payloads against a compiled YARA rule file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yara
from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin

#: The rules used when no ``rules`` option is given: a few generic indicators.
DEFAULT_RULES = Path(__file__).with_name("rules") / "default.yar"
#: Longest matched data reported per string instance, in bytes.
MAX_DATA = 64


class YaraPlugin(WorkerPlugin):
    """Matches payloads against YARA rules and reports the rules, tags, meta and matched strings.

    Output: ``{"matches": [{"rule", "namespace", "tags", "meta", "strings": [{"identifier", "offset",
    "data"}]}]}``, ``data`` being the matched bytes (at most 64). Flags: ``limit:yara-strings`` when
    ``max_strings`` cut a rule's strings, ``limit:yara-matches`` when YARA itself stopped recording one.
    """

    name = "yara"
    files = ("rules",)
    version = "1.0"

    class Options(PluginOptions):
        rules: Path = Field(DEFAULT_RULES, description="YARA rule file to compile.")
        timeout: int = Field(30, ge=1, description="YARA's own match time limit, in seconds.")
        max_strings: int = Field(32, ge=0, description="Most string matches reported per rule.")

    def __init__(self, options: PluginOptions | None = None) -> None:
        super().__init__(options)
        self._compiled: dict[Path, yara.Rules] = {}

    def setup(self) -> None:
        self._rules(self.options.rules)

    def _rules(self, path: Path) -> yara.Rules:
        """The rules of ``path``, compiled once (``setup`` compiles the configured file ahead of use)."""
        rules = self._compiled.get(path)
        if rules is None:
            open(path, "rb").close()  # a missing or unreadable file: an OSError naming it (YARA says "(2, ...)")
            rules = self._compiled[path] = yara.compile(filepath=str(path))
        return rules

    def scan(self, payload: Payload, options: Options) -> Result:
        rules = self._rules(options.rules)
        flags: list[str] = []

        def warned(kind: int, _detail: Any) -> int:
            if kind == yara.CALLBACK_TOO_MANY_MATCHES and "limit:yara-matches" not in flags:
                flags.append("limit:yara-matches")  # YARA stopped recording a string's matches
            return yara.CALLBACK_CONTINUE

        cap, capped = options.max_strings, False
        matches: list[dict[str, Any]] = []
        for match in rules.match(data=payload.content, timeout=options.timeout, warnings_callback=warned):
            strings: list[dict[str, Any]] = []
            for string in match.strings:
                identifier = string.identifier
                for instance in string.instances:
                    if len(strings) >= cap:
                        capped = True
                        break
                    strings.append({"identifier": identifier, "offset": instance.offset,
                                    "data": instance.matched_data[:MAX_DATA]})
            matches.append({"rule": match.rule, "namespace": match.namespace, "tags": match.tags,
                            "meta": match.meta, "strings": strings})
        if capped:
            flags.append("limit:yara-strings")
        return Result(data={"matches": matches}, flags=flags)
