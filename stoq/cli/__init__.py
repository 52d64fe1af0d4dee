"""The ``stoq`` command: data on stdout, progress and logs on stderr.

Exit codes (``ExitCode``):

| code | meaning                                                                  |
|------|--------------------------------------------------------------------------|
| 0    | every file was scanned and no plugin reported an error                   |
| 1    | every file was scanned; at least one document has entries in ``errors``  |
| 2    | usage error (unknown option, bad value)                                  |
| 3    | some input was not scanned (missing, unreadable, not a regular file, ...); the rest was |
| 4    | configuration error (unknown plugin, bad option, rules that do not compile) |
| 5    | result store error (database unreachable or not migrated)                |
| 6    | not found (``stoq results`` with an unknown id)                          |
| 130  | interrupted (SIGINT, Ctrl-C); what was written is stored                 |
| 141  | the output was closed early (a broken pipe: ``| head``); what was written is stored |
| 143  | terminated (SIGTERM); what was written is stored                         |
"""

from __future__ import annotations

import logging
import os
import sys
from enum import IntEnum

import typer


class ExitCode(IntEnum):
    """Documented exit codes of every ``stoq`` command."""

    OK = 0
    PLUGIN_ERRORS = 1
    USAGE = 2
    INPUT = 3
    CONFIG = 4
    STORE = 5
    NOT_FOUND = 6
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
    OUTPUT_CLOSED = 141  # 128 + SIGPIPE
    TERMINATED = 143  # 128 + SIGTERM


app = typer.Typer(
    name="stoq",
    help="Analysis. Simplified. Hash, type, archive and analyse files, and everything inside them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr.")) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="stoq: %(levelname)s %(name)s: %(message)s")


def say(message: str) -> None:
    """Prints ``stoq: message`` on stderr, if stderr is still open (a closed one is no error: the
    command may be ending because its output was closed)."""
    try:
        typer.echo(f"stoq: {message}", err=True)
    except (OSError, ValueError):
        pass


def fail(message: str, code: ExitCode) -> typer.Exit:
    """Prints ``message`` on stderr (as :func:`say`) and returns the ``typer.Exit`` to raise."""
    say(message)
    return typer.Exit(int(code))


from stoq.cli import admin, scan  # noqa: E402  (registers the commands)

__all__ = ["app", "main", "ExitCode", "fail", "say", "admin", "scan"]


def main() -> None:
    """The console script: runs the command, then leaves without the interpreter's teardown.

    Tearing down the modules and objects of a finished scan (SQLAlchemy, pydantic, the plugins) takes
    ~0.3 s here and changes nothing: every file, the store and the streams are closed or flushed by
    then. So the process ends with ``os._exit`` once the command has returned.
    """
    try:
        app()
        code: int = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or 1
    os._exit(code)
