"""``stoq scan`` and ``stoq submit``: scan files and print their documents."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import orjson
import typer

from stoq.cli import ExitCode, app, fail, say
from stoq.cli.inputs import collect
from stoq.cli.output import Format, TemplateFailure, Writer
from stoq.cli.stopping import (STOPPED, WHY, Interrupted, catch_signals, discard_stdout, ignore_signals,
                               restore_signals)
from stoq.cli.completion import complete_connectors, complete_plugin_option, complete_scan_plugins
from stoq.config import ConfigError, Settings
from stoq.filters import FileFilter

ConnectorsOpt = Annotated[Optional[str], typer.Option("--connectors", metavar="NAMES", autocompletion=complete_connectors, help="Connector plugins that also receive every document (e.g. jsonl), comma-separated.")]
ArchiverOpt = Annotated[Optional[str], typer.Option("--archiver", metavar="NAME", help="Archiver plugin that stores payloads (pack, directory, none, postgres, s3, gridfs...; setting archiver).")]
ArchiveOpt = Annotated[Optional[str], typer.Option("--archive", metavar="WHERE", help="Where the archiver stores them: a directory, or its URL (s3://bucket/prefix, postgresql://..., mongodb://...; setting archive).")]
WorkersOpt = Annotated[Optional[str], typer.Option("--workers", "-w", metavar="NAMES", autocompletion=complete_scan_plugins, help="The worker set, comma-separated (default: yara,peinfo,exif,entropy,xorsearch,iocextract; 'none': no worker).")]
OptionOpt = Annotated[Optional[list[str]], typer.Option("--option", "-o", metavar="PLUGIN.OPTION=VALUE", autocompletion=complete_plugin_option, help="Plugin option PLUGIN.OPTION=VALUE (repeatable).")]
DepthOpt = Annotated[Optional[int], typer.Option("--max-depth", min=0, help="Deepest extracted level (root is 0). Default 8.")]
JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", min=0, help="Worker processes (default: one per core).")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
TemplateOpt = Annotated[Optional[str], typer.Option("--template", metavar="FILE|builtin:NAME", help="Render each document with this Jinja2 template (sandboxed), or a bundled one: builtin:payloads, builtin:csv, builtin:markdown.")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into directories.")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="stoq.toml to use.")]
StoreOpt = Annotated[bool, typer.Option("--store/--no-store", help="Save documents in the result store.")]
ProgressOpt = Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal and there are several files).")]
MetaOpt = Annotated[Optional[list[str]], typer.Option("--meta", metavar="KEY=VALUE", help="Submission metadata kept in each document's source.meta (repeatable; e.g. tlp=amber, case=42).")]
IncludeOpt = Annotated[Optional[list[str]], typer.Option("--include", metavar="GLOB", help="Only files matching a glob (a name, or a path when it holds '/'; repeatable).")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", metavar="GLOB", help="Leave out files matching a glob (repeatable).")]
MinSizeOpt = Annotated[Optional[str], typer.Option("--min-size", metavar="SIZE", help="Leave out files smaller than this (bytes, or 10k, 5m, 1g).")]
MaxSizeOpt = Annotated[Optional[str], typer.Option("--max-size", metavar="SIZE", help="Leave out files larger than this (bytes, or 10k, 5m, 1g).")]
NewerOpt = Annotated[Optional[str], typer.Option("--newer-than", metavar="WHEN", help="Only files modified since: a duration back (30m, 2h, 3d) or an ISO date.")]
# readable=False: an unreadable input is reported with the others (exit code 3), never a usage error.
PathsArg = Annotated[list[Path], typer.Argument(metavar="PATH", help="Files or directories to scan.", readable=False)]


def settings_from(config: Path | None, workers: str | None, options: list[str] | None, max_depth: int | None,
                  jobs: int | None, connectors: str | None = None, archiver: str | None = None,
                  archive: str | None = None) -> Settings:
    from stoq.cli.options import command_line_settings

    return command_line_settings(config, {"workers": workers, "max_depth": max_depth, "jobs": jobs,
                                          "connectors": connectors, "archiver": archiver, "archive": archive}, options)


class Progress:
    """A progress bar on stderr (rich). ``enabled`` None (the default): shown when stderr is a terminal
    and there is more than one file. True (``--progress``): shown in any case. False (``--no-progress``):
    never shown. On a terminal the bar is transient (erased at the end). On a pipe or a file (only with
    ``--progress``) it is drawn with a terminal's control codes and its last state stays, ending with a
    newline; with ``TERM=dumb``, only that last state is written."""

    def __init__(self, total: int, enabled: bool | None, label: str = "scanning") -> None:
        tty = sys.stderr.isatty()
        if enabled is None:
            enabled = total > 1 and tty
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich import progress as rp

            # Off a terminal (only with --progress), rich draws nothing unless forced. redirect_stdout
            # off: the bar never takes over sys.stdout, which carries data only.
            console = Console(stderr=True, force_terminal=None if tty else True)
            self._bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                                    rp.TimeRemainingColumn(), console=console, transient=tty,
                                    redirect_stdout=False)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> "Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def step(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def restart(self, label: str, total: int) -> None:
        """The same bar, counting something else from 0 (``submit``: files sent, then documents)."""
        if self._bar is not None:
            self._bar.update(self._task, description=label, total=total, completed=0)


def store_place(url: str) -> str:
    """The result store as the user knows it: a SQLite file's path, else its URL without a password."""
    from stoq.cli.storeload import _sqlite_path
    from urllib.parse import urlsplit, urlunsplit

    path = _sqlite_path(url)
    if path is not None:
        return path
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def run_embedded(settings: Settings, files: list[Path], writer: Writer, store_enabled: bool,
                 show_progress: bool | None, meta: dict[str, str] | None = None) -> ExitCode:
    """Scans ``files`` in-process (``settings.jobs`` workers), writes and stores every document.

    A scan stopped early, by SIGINT, SIGTERM or its output closed (a broken pipe), stops its workers
    at once and stores every document it wrote, and the finished ones it had not written yet: a
    document joins the batch to store before it is written."""
    from stoq.cli.storeload import StoreLoader
    from stoq.embedded import EmbeddedPool
    from stoq.engine import Engine

    try:
        engine = Engine(settings)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    loader = None
    if store_enabled:
        try:
            loader = StoreLoader(settings.resolved_database_url())
        except Exception as exc:  # NotMigrated, StoreError: said before anything is scanned
            raise fail(str(exc), ExitCode.STORE) from None
    from stoq.cli.deliveries import Deliveries
    from stoq.connectors import open_connectors

    try:
        connectors = open_connectors(settings, engine.registry)
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    deliveries = Deliveries(connectors, loader.url if loader is not None else None, settings, say)
    code = ExitCode.OK
    keep = loader is not None or bool(connectors)
    batch: list[dict[str, Any]] = []  # written (or being written), not yet handed to the store
    handed = 0
    last_flush = time.monotonic()

    def flush(docs: list[dict[str, Any]]) -> ExitCode:
        nonlocal handed
        if loader is not None:
            loader.save(docs)  # idempotent: a batch interrupted here and saved again changes nothing
            handed += len(docs)
        return ExitCode.OK if deliveries.deliver(docs) else ExitCode.STORE
    hooks = {"started": loader.start, "before_fork": loader.join} if loader else {}
    pool = EmbeddedPool(engine, settings.resolved_jobs())
    from stoq.submission import roots_of

    stream = pool.run(roots_of(files, meta) if meta else files, **hooks)
    stopped: ExitCode | None = None
    written = 0
    closed = False
    try:
        try:  # SIGINT and SIGTERM raise Interrupted (``_scan``)
            with Progress(len(files), show_progress) as bar:
                for outcome in stream:
                    bar.step()
                    if outcome.document is None:
                        say(str(outcome.error))
                        code = max(code, ExitCode.INPUT)
                        continue
                    doc = orjson.loads(outcome.document)
                    if doc["errors"]:
                        code = max(code, ExitCode.PLUGIN_ERRORS)
                    if keep:
                        batch.append(doc)
                    written += 1  # first: a signal may arrive as the write returns
                    writer.write(doc, outcome.document)
                    if batch and (len(batch) >= 100 or time.monotonic() - last_flush > 0.5):
                        code = max(code, flush(batch))
                        batch, last_flush = [], time.monotonic()
            closed = True  # before close(): a broken pipe there must not lead to a second try
            writer.close()
        except Interrupted as exc:
            stopped = STOPPED[signal.Signals(exc.signum)]
        except BrokenPipeError:
            stopped = ExitCode.OUTPUT_CLOSED
        finally:
            ignore_signals()  # a second Ctrl-C must not cut the storing short
            stream.close()  # a scan stopped early: its workers stop now
        if stopped is not None and keep:  # finished, not written: stored too
            batch.extend(orjson.loads(o.document) for o in pool.leftover if o.document is not None)
        if batch:
            code = max(code, flush(batch))
        if loader is not None:
            loader.finish()
        if connectors and not deliveries.finish():
            code = max(code, ExitCode.STORE)
    except Exception as exc:
        if type(exc).__name__ in ("NotMigrated", "StoreError"):
            raise fail(str(exc), ExitCode.STORE) from None
        raise
    finally:
        if not closed and stopped is not ExitCode.OUTPUT_CLOSED:
            try:
                writer.close()  # an interrupted json array is still closed
            except OSError:
                stopped = stopped or ExitCode.OUTPUT_CLOSED
    where = f" in {store_place(loader.url)}" if loader is not None else ""
    if stopped is not None:
        why = WHY[stopped]
        stored = f"; {handed} document(s) stored{where}" if loader is not None else ""
        say(f"{why}: stopped after {written} of {len(files)} file(s) written{stored}")
        if stopped is ExitCode.OUTPUT_CLOSED:
            discard_stdout()
        return stopped
    if loader is not None and handed:
        say(f"{handed} document(s) stored{where}")
    return code


def run_cluster(settings: Settings, files: list[Path], writer: Writer, wait: bool,
                show_progress: bool | None, meta: dict[str, str] | None = None) -> ExitCode:
    """Submits ``files`` to the cluster; waits for and writes their documents (or, with ``--no-wait``,
    waits until the cluster has accepted or refused each scan and prints the accepted scans' ids, one
    per line). Stopped early (SIGINT, SIGTERM, a closed output), it names on stderr the scans sent
    and not printed: the cluster goes on with them, and ``stoq results ID`` reads them later."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    from stoq.tasks.client import ClusterClient, new_notify_key, new_verdicts_key

    try:
        client = ClusterClient(settings)
    except Exception as exc:  # the broker, Redis, the archive or the ledger's database cannot be reached
        if type(exc).__name__ in ("NotMigrated", "StoreError"):
            raise fail(f"cannot record the submission in the ledger: {exc}", ExitCode.STORE) from None
        raise fail(f"cannot reach the cluster: {type(exc).__name__}: {exc}", ExitCode.CONFIG) from None
    code = ExitCode.OK
    notify = new_notify_key() if wait else None
    verdicts = None if wait else new_verdicts_key()
    sent_ids: list[str] = []
    written: str | None = None  # a document written and not yet flushed
    paths: dict[str, Path] = {}
    done: set[str] = set()  # printed or refused
    handled = 0  # files sent or found unreadable
    stopped: ExitCode | None = None

    def refused(scan_id: str, why: str) -> None:
        nonlocal code
        say(f"the cluster refused scan {scan_id} ({paths[scan_id]}): {why}")
        code = max(code, ExitCode.CONFIG)
        done.add(scan_id)
    try:
        try:  # SIGINT and SIGTERM raise Interrupted (``_scan``)
            with Progress(len(files), show_progress, "sending") as bar:
                for sent in client.submit(files, notify, verdicts, meta=meta):
                    handled += 1
                    bar.step()
                    if sent.scan_id is None:
                        say(str(sent.error))
                        code = max(code, ExitCode.INPUT)
                    else:
                        sent_ids.append(sent.scan_id)
                        paths[sent.scan_id] = sent.path
                bar.restart("scanning" if wait else "accepted", len(sent_ids))
                if notify is not None:
                    # Documents arrive as scans finish; they are written in input order, as `stoq scan`
                    # writes them (a finished document waits for those before it).
                    ready: dict[str, tuple[dict[str, Any], bytes] | None] = {}
                    position = 0
                    for doc, raw in client.documents(notify, set(sent_ids)):
                        bar.step()
                        if "refused" in doc:  # the workers cannot run this submission's settings
                            refused(doc["scan_id"], doc["refused"])
                            ready[doc["scan_id"]] = None
                        else:
                            ready[doc["scan_id"]] = (doc, raw)
                        while position < len(sent_ids) and sent_ids[position] in ready:
                            finished = ready.pop(sent_ids[position])
                            position += 1
                            if finished is None:
                                continue
                            if finished[0]["errors"]:
                                code = max(code, ExitCode.PLUGIN_ERRORS)
                            writer.write(*finished)
                            # Written, not yet flushed: an interrupt before the flush ends still leaves it in
                            # the buffer that the exit flushes (printed); a closed output does not.
                            written = finished[0]["scan_id"]
                            writer.out.flush()  # scans finish at the cluster's pace: show each at once
                            done.add(written)
                            written = None
                    writer.close()
                else:  # --no-wait: the verdicts, then the accepted ids (one per line, or a JSON array)
                    for scan_id, why in client.verdicts(verdicts or "", set(sent_ids)):
                        bar.step()
                        if why is not None:
                            refused(scan_id, why)
            if not wait:
                accepted = [i for i in sent_ids if i not in done]
                out = orjson.dumps(accepted) + b"\n" if writer.fmt is Format.json else "".join(
                    f"{i}\n" for i in accepted).encode()
                sys.stdout.buffer.write(out)
                sys.stdout.buffer.flush()
                done.update(accepted)
        except Interrupted as exc:
            stopped = STOPPED[signal.Signals(exc.signum)]
            if written is not None:
                done.add(written)
        except BrokenPipeError:
            stopped = ExitCode.OUTPUT_CLOSED
        finally:
            ignore_signals()
    except (OperationalError, RedisError) as exc:  # the broker or Redis went away while sending
        raise fail(f"lost the cluster: {exc}", ExitCode.CONFIG) from None
    finally:
        client.close()
    if stopped is None:
        return code
    why = WHY[stopped]
    running = [i for i in sent_ids if i not in done]
    unsent = len(files) - handled
    if wait and stopped is not ExitCode.OUTPUT_CLOSED:
        try:
            writer.close()  # an interrupted json array is still closed
        except OSError:
            pass
    say(f"{why}: {len(running)} scan(s) sent and not printed go on in the cluster, which stores their "
        f"documents (`stoq results ID`)" + (f"; {unsent} file(s) not sent" if unsent else "")
        + (":" if running else ""))
    for scan_id in running:
        say(f"  {scan_id}  {paths[scan_id]}")
    if stopped is ExitCode.OUTPUT_CLOSED:
        discard_stdout()
    return stopped


def selection(meta: list[str] | None, include: list[str] | None, exclude: list[str] | None, min_size: str | None,
              max_size: str | None, newer_than: str | None) -> tuple[dict[str, str], FileFilter]:
    """``--meta`` and the file filters, checked (a bad one: exit code 2, usage)."""
    from stoq.submission import MetaError, parse_meta

    try:
        return parse_meta(meta or []), FileFilter.of(include, exclude, min_size, max_size, newer_than)
    except (MetaError, ValueError) as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _scan(paths: list[Path], recursive: bool, workers: str | None, options: list[str] | None, max_depth: int | None,
          jobs: int | None, fmt: Format, template: str | None, config: Path | None, store: bool,
          show_progress: bool | None, submit: bool, wait: bool = True, connectors: str | None = None,
          meta: dict[str, str] | None = None, filters: FileFilter | None = None,
          archiver: str | None = None, archive: str | None = None) -> None:
    saved = catch_signals()  # for the whole command: an interrupt anywhere is an exit code, never a traceback
    try:
        _scan_files(paths, recursive, workers, options, max_depth, jobs, fmt, template, config, store, show_progress,
                    submit, wait, connectors, meta or {}, filters or FileFilter(), archiver, archive)
    except Interrupted as exc:
        code = STOPPED[signal.Signals(exc.signum)]
        raise fail(f"{WHY[code]} before the scan began", code) from None
    finally:
        restore_signals(saved)


def _scan_files(paths: list[Path], recursive: bool, workers: str | None, options: list[str] | None,
                max_depth: int | None, jobs: int | None, fmt: Format, template: str | None, config: Path | None,
                store: bool, show_progress: bool | None, submit: bool, wait: bool, connectors: str | None,
                meta: dict[str, str], filters: FileFilter, archiver: str | None = None,
                archive: str | None = None) -> None:
    settings = settings_from(config, workers, options, max_depth, jobs, connectors, archiver, archive)
    files, problems = collect(paths, recursive, filters)
    for problem in problems:
        say(problem)
    left_out = filters.summary()
    if left_out:
        say(left_out)
    if submit and not settings.broker_url:
        typer.echo("stoq: no STOQ_BROKER_URL set: running embedded (local worker processes)", err=True)
    try:
        writer = Writer(fmt, template)
    except TemplateFailure as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    try:
        if submit and settings.broker_url:
            code = run_cluster(settings, files, writer, wait, show_progress, meta)
        else:
            code = run_embedded(settings, files, writer, store, show_progress, meta)
    except TemplateFailure as exc:
        raise fail(str(exc), ExitCode.CONFIG) from None
    raise typer.Exit(int(max(code, ExitCode.INPUT if problems else ExitCode.OK)))


@app.command()
def scan(paths: PathsArg, recursive: RecursiveOpt = False, workers: WorkersOpt = None, option: OptionOpt = None,
         max_depth: DepthOpt = None, jobs: JobsOpt = None, format: FormatOpt = Format.jsonl,
         template: TemplateOpt = None, config: ConfigOpt = None, store: StoreOpt = True,
         show_progress: ProgressOpt = None, connectors: ConnectorsOpt = None, meta: MetaOpt = None,
         include: IncludeOpt = None, exclude: ExcludeOpt = None, min_size: MinSizeOpt = None,
         max_size: MaxSizeOpt = None, newer_than: NewerOpt = None, archiver: ArchiverOpt = None,
         archive: ArchiveOpt = None) -> None:
    """Scan files here, in this machine's processes: no broker, no database server."""
    given, filters = selection(meta, include, exclude, min_size, max_size, newer_than)
    _scan(paths, recursive, workers, option, max_depth, jobs, format, template, config, store, show_progress, False,
          connectors=connectors, meta=given, filters=filters, archiver=archiver, archive=archive)


@app.command()
def submit(paths: PathsArg, recursive: RecursiveOpt = False, workers: WorkersOpt = None, option: OptionOpt = None,
           max_depth: DepthOpt = None, jobs: JobsOpt = None, format: FormatOpt = Format.jsonl,
           template: TemplateOpt = None, config: ConfigOpt = None, store: StoreOpt = True,
           show_progress: ProgressOpt = None,
           wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Cluster: wait for the documents and print them (default), or print the scan ids at once.")] = True,
           connectors: ConnectorsOpt = None, meta: MetaOpt = None, include: IncludeOpt = None,
           exclude: ExcludeOpt = None, min_size: MinSizeOpt = None, max_size: MaxSizeOpt = None,
           newer_than: NewerOpt = None, archiver: ArchiverOpt = None, archive: ArchiveOpt = None) -> None:
    """Submit files to the cluster (STOQ_BROKER_URL); without a broker, scan them embedded."""
    given, filters = selection(meta, include, exclude, min_size, max_size, newer_than)
    _scan(paths, recursive, workers, option, max_depth, jobs, format, template, config, store, show_progress, True,
          wait, connectors, given, filters, archiver, archive)

