"""``stoq dirmon`` and ``stoq intake``: the sources that run until stopped (docs/sources/)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from stoq.cli import ExitCode, app, fail, say
from stoq.cli.scan import (ConfigOpt, ConnectorsOpt, DepthOpt, ExcludeOpt, IncludeOpt, JobsOpt, MaxSizeOpt, MetaOpt,
                           MinSizeOpt, NewerOpt, OptionOpt, WorkersOpt, selection, settings_from)


def _stop_on_signals() -> threading.Event:
    """SIGINT and SIGTERM set the returned event: the source finishes the batch in hand and stops."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def open_store(url: str) -> Any:
    """The result store (SQLAlchemy: the ledger needs it), or exit code 5."""
    from stoq.store import Store

    try:
        return Store.open(url)
    except Exception as exc:  # NotMigrated, StoreError
        raise fail(str(exc), ExitCode.STORE) from None


@app.command()
def dirmon(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR", help="Directories to watch (with their subdirectories).")],
    workers: WorkersOpt = None, option: OptionOpt = None, max_depth: DepthOpt = None, jobs: JobsOpt = None,
    config: ConfigOpt = None, connectors: ConnectorsOpt = None, meta: MetaOpt = None,
    include: IncludeOpt = None, exclude: ExcludeOpt = None, min_size: MinSizeOpt = None,
    max_size: MaxSizeOpt = None, newer_than: NewerOpt = None,
    polling: Annotated[bool, typer.Option("--polling", help="Poll the directories (network filesystems) instead of inotify.")] = False,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.1, help="Polling: seconds between two looks.")] = 2.0,
    settle: Annotated[float, typer.Option("--settle", min=0.0, help="Seconds a file's size and mtime must stay unchanged where no close-write says it is complete (polling; files found by a scan).")] = 2.0,
    batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="Files per submission.")] = 256,
    rescan_every: Annotated[float, typer.Option("--rescan-every", min=0.0, help="Seconds between scans of the whole tree (0: only at start and when events were lost).")] = 600.0,
    move_to: Annotated[Optional[Path], typer.Option("--move-to", metavar="DIR", help="Move each file here once its document is stored.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete each file once its document is stored.")] = False,
    report_every: Annotated[float, typer.Option("--report-every", min=0.1, help="Seconds between progress lines on stderr.")] = 10.0,
) -> None:
    """Watch directories and submit each new or replaced file once, when completely written (cluster
    when STOQ_BROKER_URL is set, embedded otherwise). Runs until SIGINT or SIGTERM."""
    from stoq.dirmon import ClusterSubmitter, Dirmon, DirmonOptions, EmbeddedSubmitter, Watcher
    from stoq.config import ConfigError
    from stoq.ledger import Ledger

    given, filters = selection(meta, include, exclude, min_size, max_size, newer_than)
    if move_to is not None and delete:
        raise fail("--move-to and --delete: choose one", ExitCode.USAGE)
    for d in dirs:
        if not d.is_dir():
            raise fail(f"{d}: not a directory", ExitCode.INPUT)
    if move_to is not None:
        move_to = move_to.absolute()
        if any(move_to == d.absolute() or d.absolute() in move_to.parents for d in dirs):
            raise fail(f"--move-to {move_to} is inside a watched directory", ExitCode.USAGE)
    settings = settings_from(config, workers, option, max_depth, jobs, connectors)
    store = open_store(settings.resolved_database_url())
    try:
        submitter: Any = ClusterSubmitter(settings) if settings.broker_url else EmbeddedSubmitter(settings, store)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except Exception as exc:  # the broker, Redis or the archive cannot be reached
        raise fail(f"cannot reach the cluster: {type(exc).__name__}: {exc}", ExitCode.CONFIG) from None
    options = DirmonOptions(polling=polling, poll_interval=poll_interval, settle=settle, batch=batch,
                            rescan_every=rescan_every, move_to=move_to, delete=delete, report_every=report_every)
    stop = _stop_on_signals()
    dirs = [d.absolute() for d in dirs]
    watcher = Watcher(dirs, options)
    watcher.start()  # before the first scan of the tree: nothing written meanwhile is missed
    mode = "cluster" if settings.broker_url else "embedded"
    say(f"dirmon: watching {', '.join(str(d) for d in dirs)} ({'polling' if polling else 'inotify'}, {mode})")
    monitor = Dirmon(dirs, options, Ledger(store.engine), submitter, given, filters, say)
    try:
        monitor.run(stop, watcher)
    except Exception as exc:
        if type(exc).__name__ in ("NotMigrated", "StoreError"):
            raise fail(str(exc), ExitCode.STORE) from None
        raise
    finally:
        watcher.stop()
        submitter.close()
        store.close()
