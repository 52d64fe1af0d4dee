"""Plugins that misbehave on purpose, installed by the tests as a third-party distribution would be
(a ``.dist-info`` with entry points on ``sys.path``). Never shipped."""

from __future__ import annotations

import logging
import os
import signal
import time

from pydantic import Field

from stoq.plugin import ExtractorPlugin, Extracted, Payload, Plugin, PluginOptions, Result, WorkerPlugin


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

    class Options(PluginOptions):
        trigger: str = Field("", description="Spin only on payloads containing this text (empty: always).")

    def scan(self, payload: Payload, options: Options) -> Result:
        while options.trigger.encode() in payload.content:
            try:
                sum(range(1000))
            except Exception:
                pass
        return Result(data={"spun": False})


class Sleeper(WorkerPlugin):
    """Blocks in native code (time.sleep) where a soft limit cannot reach it."""

    name = "sleeper"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        if b"SLEEP" in payload.content:
            time.sleep(3600)
        return Result(data={"slept": False})


class Napper(WorkerPlugin):
    """Sleeps ``seconds`` on payloads containing NAP, saying so in the log first: a slow plugin whose
    worker a test can kill while it runs, and whose redelivered run then finishes."""

    name = "napper"
    version = "1"

    class Options(PluginOptions):
        seconds: float = Field(0.0, description="How long to sleep.")

    def scan(self, payload: Payload, options: Options) -> Result:
        if b"NAP" in payload.content:
            logging.getLogger("stoq_testplugins").warning("napping %s s on %s", options.seconds, payload.sha256)
            time.sleep(options.seconds)
        return Result(data={"napped": options.seconds})


class Segv(WorkerPlugin):
    """Kills its own process with SIGSEGV on payloads containing SEGV, as a crashing native parser would."""

    name = "segv"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        if b"SEGV" in payload.content:
            if os.environ.get("TESTPLUGINS_SEGV_LOG"):  # a test counts the deaths: one line each
                with open(os.environ["TESTPLUGINS_SEGV_LOG"], "a") as log:
                    log.write(payload.sha256 + "\n")
            os.kill(os.getpid(), signal.SIGSEGV)
        return Result(data={"crashed": False})


class Stubborn(WorkerPlugin):
    """Ignores its soft time limit on payloads containing STUBBORN: catches even the BaseException the
    soft limit raises and goes on looping, so only the hard limit (another process's kill) ends it."""

    name = "stubborn"
    version = "1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        while b"STUBBORN" in payload.content:
            try:
                time.sleep(0.05)
            except BaseException:  # noqa: B036 - the point of this plugin
                pass
        return Result(data={"stubborn": False})


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


class Misfit(WorkerPlugin):
    """Misbehaves in the way ``mode`` names: what the framework must still turn into an error entry
    (or, for odd text and nesting, into a valid document)."""

    name = "misfit"
    version = "1"

    class Options(PluginOptions):
        mode: str = Field("", description="accepts-raises, text-child, raw-child, number-name, surrogates, "
                                          "deep, deeper, exit.")
        limit: int = Field(3, description="An option a dispatch rule may set (badly).")

    def accepts(self, payload: Payload) -> bool:
        if self.options.mode == "accepts-raises":
            raise ValueError("accepts blew up")
        return super().accepts(payload)

    def scan(self, payload: Payload, options: Options) -> object:
        mode = options.mode
        if mode == "text-child":
            return Result(children=[Extracted("not bytes")])  # type: ignore[arg-type]
        if mode == "raw-child":
            return Result(children=[b"abc"])  # type: ignore[list-item]
        if mode == "number-name":
            return Result(children=[Extracted(b"abc", filename=5)])  # type: ignore[arg-type]
        if mode == "surrogates":
            return Result(data={"s": "a\ud800b", "k\udfff": ["\udce9"]},
                          children=[Extracted(b"child", filename="n\ud800.txt", meta={"m": "\ud83d"})])
        if mode in ("deep", "deeper"):
            nested: list[object] = []
            inner = nested
            for _ in range(198 if mode == "deep" else 400):  # deep: 200 levels with the dict
                inner.append([])
                inner = inner[0]  # type: ignore[assignment]
            return {"nested": nested}
        if mode == "exit":
            raise SystemExit(7)
        return {"limit": options.limit}


class NoCategory(Plugin):
    """Declares no category: listed with an error, hides nothing."""

    name = "nocategory"
    version = "1"


def __getattr__(name: str) -> object:
    if name == "Exiting":  # the entry point ``exiting`` loads this: a plugin module that calls exit()
        raise SystemExit(3)
    raise AttributeError(name)
