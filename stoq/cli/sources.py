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
    polling: Annotated[Optional[bool], typer.Option("--polling/--inotify", help="Poll the directories (network filesystems) instead of inotify (default: option dirmon.polling, off).", show_default=False)] = None,
    poll_interval: Annotated[Optional[float], typer.Option("--poll-interval", min=0.1, help="Polling: seconds between two looks (default: dirmon.poll_interval, 2).")] = None,
    settle: Annotated[Optional[float], typer.Option("--settle", min=0.0, help="Seconds a file's size and mtime must stay unchanged where no close-write says it is complete (polling; files found by a scan; default: dirmon.settle, 2).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, max=4096, help="Files per submission (default: dirmon.batch, 256).")] = None,
    rescan_every: Annotated[Optional[float], typer.Option("--rescan-every", min=0.0, help="Seconds between scans of the whole tree, 0: only at start and when events were lost (default: dirmon.rescan_every, 600).")] = None,
    move_to: Annotated[Optional[Path], typer.Option("--move-to", metavar="DIR", help="Move each file here once its document is stored.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete each file once its document is stored.")] = False,
    report_every: Annotated[float, typer.Option("--report-every", min=0.1, help="Seconds between progress lines on stderr.")] = 10.0,
) -> None:
    """Watch directories and submit each new or replaced file once, when completely written (cluster
    when STOQ_BROKER_URL is set, embedded otherwise). Runs until SIGINT or SIGTERM."""
    from stoq.dirmon import ClusterSubmitter, EmbeddedSubmitter
    from stoq.config import ConfigError
    from stoq.dirmon_ledger import Ledger
    from stoq.registry import Registry, make_options

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
    given_options = {k: v for k, v in {"polling": polling, "poll_interval": poll_interval, "settle": settle,
                                         "batch": batch, "rescan_every": rescan_every}.items() if v is not None}
    try:  # the source plugin, found like any plugin; its options: stoq.toml < STOQ_DIRMON__* < -o < the flags
        cls = Registry.discover().get("dirmon")
        source = cls(make_options(cls, {**settings.plugins.get("dirmon", {}), **given_options}))
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    settings.plugins.pop("dirmon", None)  # the source's, not a scan plugin's
    store = open_store(settings.resolved_database_url())
    try:
        submitter: Any = ClusterSubmitter(settings) if settings.broker_url else EmbeddedSubmitter(settings, store)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    except Exception as exc:  # the broker, Redis or the archive cannot be reached
        raise fail(f"cannot reach the cluster: {type(exc).__name__}: {exc}", ExitCode.CONFIG) from None
    stop = _stop_on_signals()
    dirs = [d.absolute() for d in dirs]
    watcher, monitor = source.monitor(dirs, Ledger(store.engine), submitter, given, filters, say, move_to, delete,
                                      report_every)
    watcher.start()  # before the first scan of the tree: nothing written meanwhile is missed
    mode = "cluster" if settings.broker_url else "embedded"
    say(f"dirmon: watching {', '.join(str(d) for d in dirs)} "
        f"({'polling' if source.options.polling else 'inotify'}, {mode})")
    try:
        monitor.run(stop, watcher)
    except Exception as exc:
        module = type(exc).__module__
        if type(exc).__name__ in ("NotMigrated", "StoreError") or module.startswith("sqlalchemy"):
            raise fail(f"result store: {type(exc).__name__}: {exc}", ExitCode.STORE) from None
        if module.startswith(("kombu", "redis", "amqp")):
            # the broker or Redis went away: what was recorded pending is sent again at the next start
            raise fail(f"lost the cluster: {type(exc).__name__}: {exc}", ExitCode.CONFIG) from None
        raise
    finally:
        watcher.stop()
        submitter.close()
        store.close()


@app.command()
def intake(
    url: Annotated[str, typer.Option("--from", metavar="URL", help="amqp://... (a RabbitMQ queue) or redis://... (a Redis stream).")],
    name: Annotated[str, typer.Option("--queue", metavar="NAME", help="The queue or stream to consume.")] = "stoq-intake",
    dead_letters: Annotated[Optional[str], typer.Option("--dead-letter", metavar="NAME", help="Where bad messages go, with the reason (default: NAME.dlq).")] = None,
    paths_under: Annotated[Optional[list[Path]], typer.Option("--paths-under", metavar="DIR", help="Directories whose files a message may name by path (repeatable; without it, path messages are refused).")] = None,
    max_inline: Annotated[Optional[int], typer.Option("--max-inline", min=0, max=16 << 20, help="Largest inline content, bytes decoded (default: option intake.max_inline, 1 MiB).")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, max=1024, help="Messages per submission (default: intake.batch, 64).")] = None,
    consumer: Annotated[Optional[str], typer.Option("--consumer", help="Redis: this consumer's name in the group stoq-intake (default: the host name); keep it across restarts.")] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Stop once nothing is waiting (else run until SIGINT or SIGTERM).")] = False,
    workers: WorkersOpt = None, option: OptionOpt = None, max_depth: DepthOpt = None, jobs: JobsOpt = None,
    config: ConfigOpt = None, connectors: ConnectorsOpt = None, meta: MetaOpt = None,
    report_every: Annotated[float, typer.Option("--report-every", min=0.1, help="Seconds between progress lines on stderr.")] = 10.0,
) -> None:
    """Consume submission messages (docs/intake-message.schema.json) from a RabbitMQ queue or a Redis
    stream; bad ones go to a dead-letter queue or stream with the reason."""
    import socket
    import tempfile

    from stoq.config import ConfigError
    from stoq.dirmon import ClusterSubmitter, EmbeddedSubmitter
    from stoq import intake as ik
    from stoq.registry import Registry, make_options

    given, _ = selection(meta, None, None, None, None, None)
    settings = settings_from(config, workers, option, max_depth, jobs, connectors)
    flags = {k: v for k, v in {"batch": batch, "max_inline": max_inline}.items() if v is not None}
    try:  # the source plugin, found like any plugin; its options: stoq.toml < STOQ_INTAKE__* < -o < the flags
        cls = Registry.discover().get("intake")
        source = cls(make_options(cls, {**settings.plugins.get("intake", {}), **flags}))
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    settings.plugins.pop("intake", None)  # the source's, not a scan plugin's
    batch = source.options.batch
    store = None if settings.broker_url else open_store(settings.resolved_database_url())
    submitters: dict[str, Any] = {}

    def submit(chosen: Any, roots: list[Any]) -> tuple[list[str], dict[str, str]]:
        key = chosen.model_dump_json()
        if key not in submitters:
            if len(submitters) >= 8:  # a few profiles at once: the oldest goes
                submitters.pop(next(iter(submitters))).close()
            submitters[key] = ClusterSubmitter(chosen) if chosen.broker_url else EmbeddedSubmitter(chosen, store)
        result: tuple[list[str], dict[str, str]] = submitters[key].submit(roots)
        return result
    try:
        transport = ik.open_transport(url, name, dead_letters or f"{name}.dlq", batch, consumer or socket.gethostname())
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    except Exception as exc:
        raise fail(f"cannot reach {url.split('@')[-1]}: {type(exc).__name__}: {exc}", ExitCode.CONFIG) from None
    spool = Path(tempfile.mkdtemp(prefix="stoq-intake-"))
    worker = source.intake(settings, list(paths_under or []), given, submit, spool)
    stop = _stop_on_signals()
    say(f"intake: consuming {transport.origin} ({'cluster' if settings.broker_url else 'embedded'})")
    try:
        ik.run(transport, worker, batch, stop, drain, say, report_every)
    except Exception as exc:
        if type(exc).__name__ in ("NotMigrated", "StoreError"):
            raise fail(str(exc), ExitCode.STORE) from None
        raise
    finally:
        worker.close()
        transport.close()
        for submitter in submitters.values():
            submitter.close()
        if store is not None:
            store.close()
