"""The ``dropfolder`` worker: original stoQ's ``fireeye``, a payload written into a folder a sandbox watches."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin

#: Largest sandbox report attached to the output, in bytes.
REPORT_MAX = 1024 * 1024


def drop(folder: Path, name: str, content: bytes) -> bool:
    """Writes ``content`` as ``folder/name``, atomically: a hidden temporary file in the same folder, synced,
    then renamed, so a watcher never sees a partial file. False when the file was there already."""
    target = folder / name
    if target.exists():
        return False
    fd, temp = tempfile.mkstemp(prefix=".stoq-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True


def report(folder: Path, sha256: str) -> tuple[Any, list[str]]:
    """The sandbox's report for ``sha256`` (``folder/<sha256>.json``), if it has written one."""
    path = folder / f"{sha256}.json"
    if not path.is_file():
        return None, []
    if path.stat().st_size > REPORT_MAX:
        return None, ["limit:dropfolder-report-size"]
    try:
        return json.loads(path.read_bytes()), []
    except ValueError:
        return None, ["dropfolder:bad-report"]


class DropfolderPlugin(WorkerPlugin):
    """Writes a payload, named by its sha256, into a folder a sandbox (or any other tool) watches, and
    attaches the report that tool wrote back for it, if any.

    The payload goes to ``folder/<sha256><suffix>`` through a temporary file and a rename (no partial
    file is ever visible); a payload already there is not written again. Only payloads that pass the
    filters are written: ``mimes`` (prefixes of the MIME type), ``max_bytes``, and ``rules`` (only
    payloads sent by one of these YARA dispatch rules: the way to drop, say, only what a YARA rule
    matched). The reverse direction: when ``reports`` is set, a JSON report the sandbox wrote as
    ``reports/<sha256>.json`` is attached to the output (scan the file again once the sandbox is done,
    or let a directory source submit the reports folder). Output ``{"dropped": bool, "path", "report"}``,
    or ``None`` for a payload the filters skipped. Flags: ``limit:dropfolder-report-size``,
    ``dropfolder:bad-report``, ``dropfolder:no-folder`` (``folder`` not set: nothing written). Nothing leaves the machine but the file written.
    """

    name = "dropfolder"
    version = "1.0"

    class Options(PluginOptions):
        folder: Path | None = Field(None, description="Folder the payloads are written to (required).")
        suffix: str = Field("", description="Appended to the file name (e.g. .bin), for tools that need one.")
        mimes: list[str] = Field(default_factory=list, description="MIME type prefixes written (empty: all).")
        rules: list[str] = Field(default_factory=list, description="Only payloads sent by one of these YARA "
                                                                   "dispatch rules (empty: any).")
        max_bytes: int = Field(64 * 1024 * 1024, ge=0, description="Largest payload written.")
        reports: Path | None = Field(None, description="Folder of the sandbox's reports, <sha256>.json.")

    def scan(self, payload: Payload, options: Options) -> Result:
        if options.folder is None:  # not configured: nothing written, and said so
            return Result(data=None, flags=["dropfolder:no-folder"])
        wanted = ((not options.mimes or payload.mime.startswith(tuple(options.mimes)))
                  and (not options.rules or any(rule in options.rules for rule in payload.dispatch_rules))
                  and payload.size <= options.max_bytes)
        if not wanted:
            return Result(data=None)
        name = f"{payload.sha256}{options.suffix}"
        dropped = drop(options.folder, name, payload.content)
        found, flags = report(options.reports, payload.sha256) if options.reports else (None, [])
        return Result(data={"dropped": dropped, "path": str(options.folder / name), "report": found}, flags=flags)
