"""The ``filetype`` worker: libmagic's and magika's view of a payload's type, and whether its name agrees
(original stoQ's ``trid`` worker: TrID is proprietary)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import magic
from pydantic import Field

from stoq.plugin import Extra, Payload, PluginOptions, Result, WorkerPlugin

#: Longest filename extension compared (a longer "extension" is part of a name, not a type).
MAX_EXTENSION = 16


def suffix(filename: str | None) -> str | None:
    """The lower-case extension of a payload's name (``a.PDF`` -> ``pdf``), None without one."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return ext.lower() if dot and stem and 0 < len(ext) <= MAX_EXTENSION else None


class FiletypePlugin(WorkerPlugin):
    """Types a payload by its content with libmagic and magika, and says whether they and its name disagree.

    Output: ``{"magic": {"description", "mime", "extensions"}, "magika": {"label", "mime", "description",
    "group", "extensions", "score"} or null, "magika_skipped", "extension", "extension_mismatch",
    "engines_disagree"}``. ``extension_mismatch`` is true when the name's extension is none that either
    engine suggests (a PE named ``.pdf``), null when there is nothing to compare; ``engines_disagree`` is
    true when both suggest extensions, none in common, and their MIME types differ. Flags:
    ``filetype:extension-mismatch``, ``filetype:engines-disagree``, ``filetype:magika-unavailable``
    (magika, the optional extra, is not installed).
    """

    name = "filetype"
    version = "1.0"
    extras = (Extra("magika", "stoq-analysis[magika]", "no magika content type (flag filetype:magika-unavailable)"),)

    class Options(PluginOptions):
        magika: bool = Field(True, description="Also type with magika's model, when the `magika` extra is installed.")
        max_magic_bytes: int = Field(7 * 1024 * 1024, ge=1, description="Bytes given to libmagic, from the start "
                                     "(libmagic's own default reads as many).")

    def setup(self) -> None:
        self._magic = {kind: magic.Magic(**{kind: True}) for kind in ("mime", "extension")}
        self._magic["description"] = magic.Magic()
        self._magika: tuple[int, Any] | None = None  # (pid, Magika): onnxruntime's threads do not survive fork
        self._has_magika = importlib.util.find_spec("magika") is not None

    def _magika_model(self) -> Any:
        if self._magika is None or self._magika[0] != os.getpid():
            from magika import Magika

            self._magika = (os.getpid(), Magika())
        return self._magika[1]

    def _libmagic(self, head: bytes) -> dict[str, str]:
        """libmagic's answers on a memory file holding ``head``: given a descriptor, libmagic also reads
        what a buffer cannot give it (an ELF's interpreter and build id), as ``file`` does on a path."""
        fd = os.memfd_create("stoq-filetype", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as memory:
                memory.write(head)
            answers = {}
            for kind, m in self._magic.items():
                os.lseek(fd, 0, os.SEEK_SET)
                answers[kind] = m.from_descriptor(fd)
            return answers
        finally:
            os.close(fd)

    def scan(self, payload: Payload, options: Options) -> Result:
        answers = self._libmagic(payload.content[:options.max_magic_bytes])
        found = answers["extension"]
        libmagic = {"description": answers["description"], "mime": answers["mime"],
                    "extensions": [e for e in found.split("/") if e] if found != "???" else []}
        model, skipped = None, None
        if not options.magika:
            skipped = "disabled"
        elif not self._has_magika:
            skipped = "not-installed"
        else:
            out = self._magika_model().identify_bytes(payload.content)
            model = {"label": out.output.label, "mime": out.output.mime_type, "description": out.output.description,
                     "group": out.output.group, "extensions": list(out.output.extensions), "score": round(out.score, 4)}
        extension = suffix(payload.filename)
        suggested = set(libmagic["extensions"]) | set(model["extensions"] if model else [])
        mismatch = None if extension is None or not suggested else extension not in suggested
        disagree = None
        if model is not None and libmagic["extensions"] and model["extensions"]:
            disagree = (libmagic["mime"] != model["mime"]
                        and not set(libmagic["extensions"]) & set(model["extensions"]))
        flags = (["filetype:extension-mismatch"] if mismatch else []) + (
            ["filetype:engines-disagree"] if disagree else []) + (
            ["filetype:magika-unavailable"] if skipped == "not-installed" else [])
        return Result(data={"magic": libmagic, "magika": model, "magika_skipped": skipped, "extension": extension,
                            "extension_mismatch": mismatch, "engines_disagree": disagree}, flags=flags)
