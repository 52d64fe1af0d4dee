"""The terminal side of ``stoq shell``: prompt_toolkit's line editor (history kept in a file across
sessions, Tab completion), the banner, the prompt, and the loop over :func:`commands.execute`.

Without a terminal on stdin (``stoq shell < commands.txt``), the lines are read one by one with no
prompt, no banner and no history file, and the exit code says whether any command failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import platformdirs
from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import ANSI
from prompt_toolkit.history import FileHistory

from stoq.config import APP
from stoq.shell import commands
from stoq.shell.commands import Context
from stoq.shell.render import Palette
from stoq.shell.session import Session
from stoq.terminal import safe

BANNER = r"""
   ___ _____ ___   ___
  / __|_   _/ _ \ / _ \   stoq shell {version}
  \__ \ | || (_) | (_) |  {plugins} plugins, embedded engine
  |___/ |_| \___/ \__\_\  `help` lists the commands, Tab completes, `exit` leaves
"""
PROMPT_NAME = 32  # characters of the current payload's name shown in the prompt


def history_file() -> Path:
    """Where the typed lines are kept: ``shell_history`` in the user's state directory
    (``$XDG_STATE_HOME/stoq``, by default ``~/.local/state/stoq``)."""
    return Path(platformdirs.user_state_dir(APP, appauthor=False)) / "shell_history"


def prompt_text(session: Session) -> str:
    """``stoq> ``, or ``stoq test.zip/0> `` (the payload's name, escaped and shortened; the child
    numbers walked from the file read)."""
    node = session.current
    if node is None:
        return "stoq> "
    path = node.path()
    name = safe(path[0].name)
    if len(name) > PROMPT_NAME:
        name = name[:PROMPT_NAME - 3] + "..."
    steps = "".join(f"/{n.index()}" for n in path[1:])
    return f"stoq {name}{steps}> "


def say(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    out.flush()


def loop_lines(ctx: Context, lines: Iterable[str], out: TextIO) -> int:
    """Runs lines without a terminal; 1 if any failed, else 0."""
    failed = False
    for line in lines:
        shown, error = commands.execute(ctx, line.rstrip("\n"))
        say(out, shown)
        if error is not None:
            failed = True
            say(sys.stderr, [f"error: {error}"])
        if ctx.done:
            break
    return int(failed)


def run_shell(session: Session) -> int:
    """The shell on this process's terminal; returns the exit code."""
    from stoq import __version__

    out = sys.stdout
    palette = Palette.for_stream(out)
    ctx = Context(session, palette)
    try:
        if not sys.stdin.isatty():
            return loop_lines(ctx, sys.stdin, out)
        path = history_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
        ctx.history = list(reversed(list(history.load_history_strings())))  # oldest first
        prompt: PromptSession[str] = PromptSession(history=history, completer=ShellCompleter(session), complete_while_typing=False,
                               enable_history_search=True)
        say(out, [palette.paint("title", line) if line.strip() else line
                  for line in BANNER.format(version=__version__, plugins=len(session.registry.entries)).split("\n")[1:]])
        while not ctx.done:
            try:
                line = prompt.prompt(ANSI(palette.paint("ok", prompt_text(session))))
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a new line, as a shell does
                continue
            except EOFError:  # Ctrl-D
                break
            if line.strip():
                ctx.history.append(line)
            shown, error = commands.execute(ctx, line)
            say(out, shown)
            if error is not None:
                say(out, [palette.paint("error", "error: ") + error])
        return 0
    finally:
        session.close()


class ShellCompleter(Completer):
    """prompt_toolkit's side of :func:`commands.complete`."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterator[Completion]:
        before = document.text_before_cursor
        last = before.split(" ")[-1]
        for choice in commands.complete(self.session, before):
            yield Completion(choice, start_position=-len(last), display=safe(choice))
