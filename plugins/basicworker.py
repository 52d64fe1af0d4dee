"""The ``basicworker`` worker: the example plugin for plugin authors (see docs/plugin-development.md)."""

from __future__ import annotations

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin


class BasicWorkerPlugin(WorkerPlugin):
    """Counts a payload's bytes and lines and reports a few facts about it: the example plugin to copy.

    Output: ``{"size", "lines", "nul_bytes", "printable", "head"}``: the payload's size, its count of
    ``\\n``, of NUL bytes and of printable ASCII bytes (0x20-0x7e, tab, CR, LF), and its first
    ``head_bytes`` bytes as hex. Flag ``basicworker:empty`` for an empty payload.
    """

    # The name is also the plugin's queue in the cluster and what `--workers` names; unique across categories.
    name = "basicworker"
    # Shown by `stoq list` and recorded in every scan document next to this plugin's output.
    version = "1.0"

    # Typed options with a default and a one-line description each. Users set them in stoq.toml, with
    # STOQ_BASICWORKER__HEAD_BYTES or `-o basicworker.head_bytes=32`; text values are coerced to int and
    # checked against the bounds (a bad value is a configuration error before any payload is scanned).
    class Options(PluginOptions):
        head_bytes: int = Field(16, ge=0, le=4096, description="Leading bytes of the payload shown as hex.")

    # The one method: plain code, no task queue, no timing, no try/except turning errors into prose. An
    # exception raised here is recorded by the framework as an error entry of this plugin on this payload.
    def scan(self, payload: Payload, options: Options) -> Result:
        content = payload.content
        printable = sum(content.count(bytes([b])) for b in (*range(0x20, 0x7f), 0x09, 0x0a, 0x0d))
        data = {"size": payload.size, "lines": content.count(b"\n"), "nul_bytes": content.count(b"\x00"),
                "printable": printable, "head": content[:options.head_bytes].hex()}
        # Flags are named tokens (never prose): searchable and countable across scans.
        return Result(data=data, flags=["basicworker:empty"] if not content else [])
