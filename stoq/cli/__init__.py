"""The ``stoq`` command: data on stdout, progress and logs on stderr.

Exit codes (``ExitCode``):

| code | meaning                                                                  |
|------|--------------------------------------------------------------------------|
| 0    | every file was scanned and no plugin reported an error                   |
| 1    | every file was scanned; at least one document has entries in ``errors``  |
| 2    | usage error (unknown option, bad value, -o for a plugin not installed, an ambiguous results prefix) |
| 3    | some input was not scanned (missing, unreadable, not a regular file, ...); the rest was |
| 4    | configuration error (unknown plugin, bad option, rules that do not compile) |
| 5    | result store error (database unreachable or not migrated)                |
| 6    | not found (``stoq results`` with an unknown id)                          |
| 7    | ``stoq install``/``uninstall``: pip failed, or the package brings no stoq plugin |
| 130  | interrupted (SIGINT, Ctrl-C); what was written is stored                 |
| 141  | the output was closed early (a broken pipe: ``| head``); what was written is stored |
| 143  | terminated (SIGTERM); what was written is stored                         |
"""

from __future__ import annotations

import logging
import os
import select
import sys
from enum import IntEnum
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from stoq.terminal import SafeFormatter, safe


class ExitCode(IntEnum):
    """Documented exit codes of every ``stoq`` command."""

    OK = 0
    PLUGIN_ERRORS = 1
    USAGE = 2
    INPUT = 3
    CONFIG = 4
    STORE = 5
    NOT_FOUND = 6
    INSTALL = 7  # stoq install / uninstall: pip failed, or the package brings no stoq plugin
    PENDING = 8  # stoq results ID: submitted, not finished yet (the ledger says since when)
    FAILED = 9  # stoq results ID: the ledger gave the scan up (lost after its attempts)
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
    OUTPUT_CLOSED = 141  # 128 + SIGPIPE
    TERMINATED = 143  # 128 + SIGTERM


_LABELS = {"str": "TEXT", "int": "INTEGER", "int range": "INTEGER", "float": "NUMBER", "float range": "NUMBER",
           "path": "PATH", "file": "FILE", "directory": "DIR", "Path": "PATH"}


def readable_type(label: str | None, argument: bool = False) -> str | None:
    """A parameter's type as the help shows it: ``jsonl|json|table``, ``INTEGER``, ``FILE``, a
    metavar as given; nothing for a flag (``<bool>``) or an argument (its name says it). Typer's own
    labels are Python annotations (``<list[Path]>``, ``<bool>``)."""
    if label is None or argument:
        return None
    if not (label.startswith("<") and label.endswith(">")):
        return label  # a metavar
    bare = label[1:-1].removesuffix("...")
    while bare.startswith("list[") and bare.endswith("]"):
        bare = bare[5:-1]
    if bare == "bool":
        return None
    return _LABELS.get(bare, bare)


def _show_readably(params: list[Any]) -> None:
    """Makes each parameter's help show its type as :func:`readable_type` says."""
    for param in params:
        shown = getattr(param, "display_type_rich", None)
        if shown is None or getattr(param, "_stoq_readable", False):  # an older typer: click's labels
            continue
        # an argument's name says what it takes; a counter (-v, -vv) takes nothing
        argument = getattr(param, "param_type_name", "") == "argument" or bool(getattr(param, "count", False))

        def display(ctx: Any = None, shown: Any = shown, argument: bool = argument) -> str | None:
            return readable_type(shown(ctx=ctx), argument)
        setattr(param, "display_type_rich", display)
        setattr(param, "_stoq_readable", True)


class StoqCommand(TyperCommand):
    """A command whose help shows each parameter's type readably (:func:`readable_type`)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _show_readably(params)
        return params


class StoqGroup(TyperGroup):
    """The command group, with the same help as :class:`StoqCommand`."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        _show_readably(params)
        return params


class StoqTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`StoqCommand` (one place for the help's look)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", StoqCommand)
        return super().command(*args, **kwargs)


app = StoqTyper(
    name="stoq",
    cls=StoqGroup,
    help="Analysis. Simplified. Hash, type, archive and analyse files, and everything inside them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    invoke_without_command=True,  # `stoq --version` runs no command
)


@app.callback()
def _root(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr."),
          version: Annotated[bool, typer.Option("--version", help="Print the versions of stoq, its key libraries and the programs found, and exit.")] = False,
          version_format: Annotated[str, typer.Option("--format", "-f", metavar="text|json", help="With --version: text or json.")] = "text",
          ctx: typer.Context = None) -> None:  # type: ignore[assignment]  # typer passes it; None when called directly
    if ctx is not None and (version or ctx.invoked_subcommand is None):
        _version_or_help(ctx, version, version_format)
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(SafeFormatter("stoq: %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)  # Python warnings too: through the same escaping formatter


def _version_or_help(ctx: typer.Context, version: bool, fmt: str) -> None:
    """``stoq --version`` (stoq.cli.version), or a usage error when no command is given (exit code 2)."""
    if not version:
        ctx.fail("Missing command.")
    if fmt not in ("text", "json"):
        raise fail(f"--format must be text or json, not {fmt!r}", ExitCode.USAGE)
    from stoq.cli.version import show

    show(fmt)
    raise typer.Exit(0)


def say(message: str) -> None:
    """Prints ``stoq: message`` on stderr, escaped (:func:`stoq.cli.output.safe`): messages quote file
    names and plugin errors, which a scanned file controls. A closed stderr is no error: the command may
    be ending because its output was closed."""
    try:
        typer.echo(f"stoq: {safe(message)}", err=True)
    except (OSError, ValueError):
        pass


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Prints ``message`` on stderr (as :func:`say`) and returns the ``typer.Exit`` to raise."""
    say(message)
    return typer.Exit(int(code))


from stoq.cli import admin, doctor, plugin_new, scan  # noqa: E402  (registers the commands)
from stoq.cli import completion  # noqa: E402,F401  (stoq completion)
from stoq.cli import install  # noqa: E402,F401  (stoq install, stoq uninstall)
from stoq.cli import workers  # noqa: E402,F401  (stoq workers)
from stoq.cli import sources  # noqa: E402  (stoq dirmon, stoq intake)
from stoq.cli import connectors_cmd  # noqa: E402,F401  (stoq connectors ...)
from stoq.cli import export as _export  # noqa: E402,F401  (stoq export)
from stoq.cli import serve as _serve  # noqa: E402,F401  (stoq serve, stoq tokens ...)

__all__ = ["app", "main", "ExitCode", "fail", "say", "admin", "doctor", "plugin_new", "scan"]
from stoq.cli import shell as _shell  # noqa: E402,F401  (registers `stoq shell`)


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (the kernel reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), select.POLLOUT)  # type: ignore[union-attr]
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main() -> None:
    """The console script: runs the command, then leaves without the interpreter's teardown.

    Tearing down the modules and objects of a finished scan (SQLAlchemy, pydantic, the plugins) takes
    time (docs/performance.md) and changes nothing: every file, the store and the streams are closed or
    flushed by then. So the process ends with ``os._exit`` once the command has returned.
    """
    try:
        app()
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
            if code == 1 and _stdout_gone():  # click ends a command that met a broken pipe with 1
                code = ExitCode.OUTPUT_CLOSED
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BrokenPipeError:  # any command whose reader went away (`stoq results ID | head -1`)
        code = ExitCode.OUTPUT_CLOSED
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or (ExitCode.OUTPUT_CLOSED if stream is sys.stdout else 0)
        except (OSError, ValueError):
            code = code or 1
    os._exit(int(code))
