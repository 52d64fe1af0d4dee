"""Plugins that misbehave on purpose, installed by the tests as a third-party distribution would be
(a ``.dist-info`` with entry points on ``sys.path``). Never shipped."""

from __future__ import annotations

import os
import signal
import time

from pydantic import Field

from stoq.plugin import ExtractorPlugin, Extracted, Payload, PluginOptions, Result, WorkerPlugin


class Boom(WorkerPlugin):
    """Raises on every payload that contains its trigger."""

    name = "boom"
    version = "1"

    class Options(PluginOptions):
        trigger: str = Field("", description="Raise only on payloads containing this text (empty: always).")

    def scan(self, payload: Payload, options: Options) -> Result:
        if options.trigger.encode() in payload.content:
            raise ValueError("boom on purpose")
        return Result(data={"ok": True})


class Spin(WorkerPlugin):
    """Loops forever in Python, swallowing every Exception: only a BaseException timeout stops it."""

    name = "spin"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        while True:
            try:
                sum(range(1000))
            except Exception:
                pass


class Sleeper(WorkerPlugin):
    """Blocks in native code (time.sleep) where a soft limit cannot reach it."""

    name = "sleeper"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        if b"SLEEP" in payload.content:
            time.sleep(3600)
        return Result(data={"slept": False})


class Segv(WorkerPlugin):
    """Kills its own process with SIGSEGV on payloads containing SEGV, as a crashing native parser would."""

    name = "segv"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        if b"SEGV" in payload.content:
            os.kill(os.getpid(), signal.SIGSEGV)
        return Result(data={"crashed": False})


class Nest(ExtractorPlugin):
    """Emits ``count`` children: the payload with ``#i`` appended (or the same bytes when ``same``)."""

    name = "nest"
    version = "1"

    class Options(PluginOptions):
        count: int = Field(2, description="Children per payload.")
        same: bool = Field(False, description="Emit identical children (duplicates).")

    def scan(self, payload: Payload, options: Options) -> Result:
        children = [Extracted(payload.content if options.same else payload.content + f"#{i}".encode(),
                              filename=f"child{i}", meta={"index": i, "raw": b"\x00\xff"})
                    for i in range(options.count)]
        return Result(data={"emitted": options.count}, children=children)


class Broken:
    """Not a plugin at all: the registry must list it with an error and go on."""
