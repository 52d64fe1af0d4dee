"""The ``dirmon`` source: watched directories (docs/sources/dirmon.md). ``stoq dirmon`` finds it through
its entry point and drives it; the watching, the ledger and the submission are stoq's (``stoq.dirmon``,
``stoq.dirmon_ledger``), so a source of another package is the same few lines around its own watcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from stoq.plugin import PluginOptions, SourcePlugin


class DirmonSource(SourcePlugin):
    """Watches directories and submits each new or replaced file once, when it is completely written.

    Configured like any plugin (``[plugins.dirmon]`` in ``stoq.toml``, ``STOQ_DIRMON__SETTLE=5``,
    ``-o dirmon.settle=5``); the command's own options (``--polling``, ``--settle``...) win.
    """

    name = "dirmon"
    version = "1.0"

    class Options(PluginOptions):
        polling: bool = Field(False, description="Poll the directories (network filesystems) instead of inotify.")
        poll_interval: float = Field(2.0, gt=0, le=3600, description="Polling: seconds between two looks at the tree.")
        settle: float = Field(2.0, ge=0, le=86400, description="Seconds a file's size and mtime must stay unchanged where no close-write says it is complete.")
        batch: int = Field(256, ge=1, le=4096, description="Files per submission.")
        rescan_every: float = Field(600.0, ge=0, description="Seconds between scans of the whole tree (0: only at start and when events were lost).")
        queue_max: int = Field(4096, ge=16, le=1_000_000, description="Events held between watchdog's thread and the submitter; beyond, the tree is scanned again.")
        track_max: int = Field(20_000, ge=100, le=10_000_000, description="Files waiting to be complete, at most; beyond, the tree scan waits.")

    def monitor(self, dirs: list[Path], ledger: Any, submitter: Any, meta: dict[str, str], filters: Any,
                report: Callable[[str], None], move_to: Path | None = None, delete: bool = False,
                report_every: float = 10.0) -> tuple[Any, Any]:
        """The watcher (not started) and the monitor whose ``run(stop, watcher)`` submits until ``stop``."""
        from stoq.dirmon import Dirmon, DirmonOptions, Watcher

        o = self.options
        options = DirmonOptions(polling=o.polling, poll_interval=o.poll_interval, settle=o.settle, batch=o.batch,
                                queue_max=o.queue_max, track_max=o.track_max, rescan_every=o.rescan_every,
                                move_to=move_to, delete=delete, report_every=report_every)
        return Watcher(dirs, options), Dirmon(dirs, options, ledger, submitter, meta, filters, report)
