"""The shell's commands: each a thin function from its arguments to lines of output, over the
:class:`~stoq.shell.session.Session`; :func:`execute` runs one line and turns every failure into one
line of text; :func:`complete` says what Tab offers."""

from __future__ import annotations

import glob
import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Callable

from stoq.cli.output import table
from stoq.config import did_you_mean
from stoq.runner import describe_exception
from stoq.shell import render
from stoq.shell.render import Palette
from stoq.shell.session import Session, ShellError, parse_int
from stoq.terminal import safe

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a command may use: the session, the colours, and the lines typed so far (``history``)."""

    session: Session
    palette: Palette = field(default_factory=lambda: Palette(False))
    history: list[str] = field(default_factory=list)
    done: bool = False  # set by ``exit``


Handler = Callable[[Context, list[str]], list[str]]


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its handler, its arguments as ``help`` shows them, and a line of help."""

    handler: Handler
    args: str
    help: str
    nargs: tuple[int, int]  # fewest and most arguments


def _list(ctx: Context, args: list[str]) -> list[str]:
    return render.plugin_list(ctx.session.plugins(), ctx.palette)


def _usage(ctx: Context, args: list[str]) -> list[str]:
    return render.usage(*ctx.session.usage(args[0]), ctx.palette)


def _load(ctx: Context, args: list[str]) -> list[str]:
    cls = ctx.session.load(args[0])
    return [ctx.palette.paint("ok", f"{cls.name} is ready")] + _usage(ctx, args)


def _set(ctx: Context, args: list[str]) -> list[str]:
    value = ctx.session.set_option(args[0], " ".join(args[1:]))
    return [f"{safe(args[0])} = {safe(render.shown_value(value))}"]


def _read(ctx: Context, args: list[str]) -> list[str]:
    ctx.session.read(args[0])
    return render.payload(ctx.session.node(), ctx.palette)


def _run(ctx: Context, args: list[str]) -> list[str]:
    node, data = ctx.session.run(args[0])
    lines = [ctx.palette.paint("title", f"{args[0]}:")] + render.pretty(data, ctx.palette, 1)
    extracted = [c for c in node.children if c.extracted_by == args[0]]
    if extracted:
        lines.append(f"{len(extracted)} child(ren) extracted: `children`, `cd N`")
    if node.flags:
        lines.append("flags: " + " ".join(map(safe, node.flags)))
    return lines


def _scan(ctx: Context, args: list[str]) -> list[str]:
    doc = ctx.session.scan()
    return table(doc).rstrip("\n").split("\n")


def _results(ctx: Context, args: list[str]) -> list[str]:
    node = ctx.session.node()
    chosen = args[0] if args else None
    if chosen is not None and chosen not in node.outputs:
        raise ShellError(f"no output of {chosen!r} on this payload (run so far: {', '.join(node.outputs) or 'none'})")
    lines: list[str] = []
    for name, data in node.outputs.items():
        if chosen in (None, name):
            lines += [ctx.palette.paint("title", f"{safe(name)}:")] + render.pretty(data, ctx.palette, 1)
    lines += render.errors(node, ctx.palette) if chosen is None else []
    return lines or ["no results yet on this payload (`run PLUGIN` or `scan`)"]


def _payload(ctx: Context, args: list[str]) -> list[str]:
    return render.payload(ctx.session.node(), ctx.palette)


def _children(ctx: Context, args: list[str]) -> list[str]:
    return render.children(ctx.session.node(), ctx.palette)


def _cd(ctx: Context, args: list[str]) -> list[str]:
    node = ctx.session.cd(args[0])
    return [render.where(node)]


def _save(ctx: Context, args: list[str]) -> list[str]:
    index = parse_int(args[1], "child number") if len(args) > 1 else None
    node, path = ctx.session.save(args[0], index)
    return [f"saved {render.where(node)} ({node.facts['size']} B, sha256 {node.facts['sha256']}) to {safe(path)}"]


def _hexdump(ctx: Context, args: list[str]) -> list[str]:
    offset = parse_int(args[0], "offset") if args else 0
    length = parse_int(args[1], "length") if len(args) > 1 else render.HEXDUMP_DEFAULT
    return render.hexdump(ctx.session.node().content, offset, length)


def _strings(ctx: Context, args: list[str]) -> list[str]:
    minimum = parse_int(args[0], "minimum length") if args else 4
    if minimum < 1:
        raise ShellError("minimum length must be at least 1")
    return render.strings(ctx.session.node().content, minimum) or ["no strings"]


def _history(ctx: Context, args: list[str]) -> list[str]:
    return [f"{i:>5}  {safe(line)}" for i, line in enumerate(ctx.history, 1)]


def _help(ctx: Context, args: list[str]) -> list[str]:
    if args:
        command = COMMANDS.get(args[0])
        if command is None:
            raise ShellError(unknown(args[0]))
        return [f"{args[0]} {command.args}".rstrip(), f"  {command.help}"]
    width = max(len(f"{name} {c.args}") for name, c in COMMANDS.items())
    return [f"  {ctx.palette.paint('label', f'{name} {c.args}'.ljust(width))}  {c.help}" for name, c in COMMANDS.items()]


def _exit(ctx: Context, args: list[str]) -> list[str]:
    ctx.done = True
    return []


COMMANDS: dict[str, Command] = {
    "list": Command(_list, "", "installed plugins by category", (0, 0)),
    "load": Command(_load, "PLUGIN", "set a plugin up now (a bad option or rule file is said at once); show its options", (1, 1)),
    "usage": Command(_usage, "PLUGIN", "a plugin's options: type, default, and the value set here", (1, 1)),
    "set": Command(_set, "PLUGIN.OPTION VALUE", "change a plugin option (checked by its Options model)", (2, 99)),
    "read": Command(_read, "PATH", "make a file the current payload (up to the max_file_bytes setting)", (1, 1)),
    "run": Command(_run, "PLUGIN", "run one plugin on the current payload and show its output", (1, 1)),
    "scan": Command(_scan, "", "the whole dispatch on the current payload, as `stoq scan` (children become the tree)", (0, 0)),
    "results": Command(_results, "[PLUGIN]", "every output (or one plugin's) and error on the current payload", (0, 1)),
    "payload": Command(_payload, "", "the current payload: hashes, mime, size, flags", (0, 0)),
    "children": Command(_children, "", "the current payload's extracted children", (0, 0)),
    "cd": Command(_cd, "N|..|/", "step into child N, back to the parent, or to the file read", (1, 1)),
    "save": Command(_save, "PATH [N]", "write the current payload (or child N) to PATH; never overwrites", (1, 2)),
    "hexdump": Command(_hexdump, "[OFFSET [LENGTH]]", f"hex and ASCII (default 256 bytes, at most {render.HEXDUMP_MAX})", (0, 2)),
    "strings": Command(_strings, "[MIN]", f"ASCII and UTF-16LE strings (default at least 4 characters, at most {render.STRINGS_MAX})", (0, 1)),
    "history": Command(_history, "", "the commands typed (kept across sessions)", (0, 0)),
    "help": Command(_help, "[COMMAND]", "this list, or one command", (0, 1)),
    "exit": Command(_exit, "", "leave (also quit, or Ctrl-D)", (0, 0)),
}
ALIASES = {"quit": "exit", "?": "help", "ls": "children", "info": "payload"}


def unknown(name: str) -> str:
    return f"unknown command {name!r}{did_you_mean(name, COMMANDS)}; `help` lists them"


def execute(ctx: Context, line: str) -> tuple[list[str], str | None]:
    """Runs one typed line: (lines of output, one-line error or None). Never raises for anything
    the analyst typed or a plugin did; an interrupt (Ctrl-C) stops the command, not the shell."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError as exc:
        return [], f"cannot parse the line: {exc}"
    if not words:
        return [], None
    name = ALIASES.get(words[0], words[0])
    command = COMMANDS.get(name)
    if command is None:
        return [], safe(unknown(words[0]))
    args = words[1:]
    low, high = command.nargs
    if not low <= len(args) <= high:
        return [], f"usage: {name} {command.args}".rstrip()
    try:
        return command.handler(ctx, args), None
    except ShellError as exc:
        return [], safe(str(exc))
    except KeyboardInterrupt:
        return [], "interrupted"
    except Exception as exc:  # a fault of stoq itself: one line here, the traceback with -v
        log.debug("command %r failed", line, exc_info=True)
        return [], f"{name} failed: {safe(describe_exception(exc))}"


def complete(session: Session, text: str) -> list[str]:
    """What Tab may put in place of the last word of ``text`` (the line before the cursor)."""
    words = text.split(" ")
    last = words[-1]
    if len(words) == 1:  # a command: with the space that ends it
        return sorted(f"{c} " for c in [*COMMANDS, *ALIASES] if c.startswith(last))
    name = ALIASES.get(words[0], words[0])
    position = len(words) - 1  # which argument is being typed (1: the first)
    if name in ("load", "usage", "run") and position == 1:
        return [n for n in session.plugin_names() if n.startswith(last)]
    if name == "results" and position == 1 and session.current is not None:
        return [n for n in session.current.outputs if n.startswith(last)]
    if name == "help" and position == 1:
        return [c for c in COMMANDS if c.startswith(last)]
    if name == "set" and position == 1:
        return [o for o in option_names(session) if o.startswith(last)]
    if name == "read" and position == 1 or name == "save" and position == 1:
        return paths(last)
    if name == "cd" and position == 1 and session.current is not None:
        return [c for c in ["..", "/", *map(str, range(len(session.current.children)))] if c.startswith(last)]
    return []


def option_names(session: Session) -> list[str]:
    names = []
    for plugin in session.plugin_names():
        entry = session.registry.entries[plugin]
        if entry.cls is not None:
            names += [f"{plugin}.{option}" for option in [*entry.cls.Options.model_fields, "time_limit"]]
    return names


def paths(prefix: str) -> list[str]:
    """Files and directories beginning with ``prefix`` (a directory ends with ``/``)."""
    expanded = os.path.expanduser(prefix)
    found = []
    for match in sorted(glob.glob(glob.escape(expanded) + "*"))[:200]:
        shown = prefix + match[len(expanded):]
        found.append(shown + "/" if os.path.isdir(match) else shown)
    return found
