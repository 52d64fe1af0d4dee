"""YARA rule sets for the ``yara`` plugin: a file, a directory or an index of includes, compiled with
LOKI/THOR external variables, and recompiled when any of their files changes on disk."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable

import yara

log = logging.getLogger(__name__)

#: The external variables every rule set is compiled with (LOKI/THOR conventions), empty by default.
BUILTIN_EXTERNALS: tuple[str, ...] = ("filename", "filepath", "extension", "filetype", "owner", "mime")
#: Suffixes of the rule files a directory contributes (compared in lower case).
RULE_SUFFIXES = (".yar", ".yara")

#: MIME type -> LOKI-style short file type (``filetype == "EXE"``); other types give "".
FILETYPES: dict[str, str] = {
    "application/x-dosexec": "EXE", "application/vnd.microsoft.portable-executable": "EXE",
    "application/x-msdownload": "EXE",
    "application/x-executable": "ELF", "application/x-sharedlib": "ELF", "application/x-pie-executable": "ELF",
    "application/x-object": "ELF", "application/x-coredump": "ELF",
    "application/x-mach-binary": "MACHO",
    "application/zip": "ZIP", "application/java-archive": "JAR", "application/x-rar": "RAR",
    "application/vnd.rar": "RAR", "application/x-7z-compressed": "7Z", "application/gzip": "GZIP",
    "application/x-bzip2": "BZ2", "application/x-xz": "XZ", "application/x-tar": "TAR",
    "application/vnd.ms-cab-compressed": "CAB", "application/x-iso9660-image": "ISO",
    "application/pdf": "PDF", "application/rtf": "RTF", "text/rtf": "RTF",
    "application/msword": "DOC", "application/vnd.ms-excel": "DOC", "application/vnd.ms-powerpoint": "DOC",
    "application/x-ole-storage": "DOC", "application/CDFV2": "DOC", "application/x-msi": "DOC",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "ZIP",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "ZIP",
    "application/x-shockwave-flash": "SWF", "application/x-java-applet": "CLASS",
    "image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF", "image/bmp": "BMP",
    "application/vnd.ms-outlook": "MSG", "message/rfc822": "EML", "application/x-ms-shortcut": "LNK",
}

_LOCATION = re.compile(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<message>.*)$", re.S)


class RuleError(ValueError):
    """A rule set that cannot be used: a rule file that does not compile (with its file and line), an
    include outside the rules tree, a directory without rule files."""


def externals_for(filename: str | None, mime: str, source_path: str | None = None) -> dict[str, str]:
    """The built-in externals of one payload: LOKI's ``filename`` (base name), ``filepath`` (the root's
    source path; else the name as the framework knows it, for a member its path inside its container),
    ``extension`` (lower case, with its dot, as LOKI gives it), ``filetype`` (LOKI's short upper-case
    type, "" when unknown), ``owner`` (never known: ""), and ``mime``."""
    path = source_path or filename or ""
    name = filename or path
    base = PureWindowsPath(PurePosixPath(name).name).name if name else ""
    suffix = os.path.splitext(base)[1].lower()
    return {"filename": base, "filepath": path, "extension": suffix,
            "filetype": FILETYPES.get(mime, ""), "owner": "", "mime": mime}


def parse_externals(text: str) -> dict[str, int | bool | str]:
    """``-o yara.externals=md5=,score=0,strict=true``: name -> default (an integer, a boolean, else text)."""
    found: dict[str, int | bool | str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"{pair!r} is not NAME=VALUE")
        lowered = value.strip().lower()
        found[name.strip()] = (lowered == "true" if lowered in ("true", "false")
                               else int(value) if re.fullmatch(r"-?\d+", value.strip()) else value)
    return found


def rule_files(root: Path) -> list[Path]:
    """The rule files under ``root`` (``*.yar``, ``*.yara``, any case, recursively), sorted."""
    found = [p for p in root.rglob("*") if p.suffix.lower() in RULE_SUFFIXES and p.is_file()]
    return sorted(found)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


@dataclass
class RuleSet:
    """The compiled rules of ``path`` (a rule file, a directory of them, or an index of ``include``s),
    the files they came from with their (mtime, size), and what a failed recompile said."""

    path: Path
    externals: dict[str, Any]
    rules: yara.Rules = field(init=False)
    stamps: dict[Path, tuple[int, int] | None] = field(init=False)
    checked: float = field(init=False)
    #: Set while the files changed into rules that do not compile (the previous rules stay in use).
    stale: str | None = field(init=False, default=None)
    _failed: dict[Path, tuple[int, int] | None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.rules, self.stamps = compile_rules(self.path, self.externals)
        self.checked = time.monotonic()

    def refresh(self, every: float) -> None:
        """Recompiles if a file changed (checked at most every ``every`` seconds); a failure keeps the
        old rules and sets ``stale``."""
        now = time.monotonic()
        if now - self.checked < every:
            return
        self.checked = now
        current = {p: _stamp(p) for p in self._watched()}
        if current == self.stamps:  # unchanged, or changed back to what was compiled
            self.stale = self._failed = None
            return
        if current == self._failed:  # the same broken files as last time: not compiled again
            return
        try:
            self.rules, self.stamps = compile_rules(self.path, self.externals)
        except (RuleError, OSError) as exc:
            self.stale, self._failed = str(exc), current
            log.warning("yara: rules %s changed but cannot be compiled, keeping the previous rules: %s",
                        self.path, exc)
            return
        self.stale = self._failed = None
        log.info("yara: rules %s recompiled (%d files)", self.path, len(self.stamps))

    def _watched(self) -> Iterable[Path]:
        """The files to compare: those compiled last time, and for a directory its rule files now."""
        files = set(self.stamps)
        if self.path.is_dir():
            files.update(rule_files(self.path))
        return files


def compile_rules(path: Path, externals: dict[str, Any]) -> tuple[yara.Rules, dict[Path, tuple[int, int] | None]]:
    """Compiles ``path``: a directory gives one namespace per rule file (its path relative to the
    directory); a file is compiled in namespace ``default``. Includes are resolved relative to the file
    that includes them and must stay inside the rules tree (the directory, or the file's own)."""
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        root = path.resolve()
        files = rule_files(root)
        if not files:
            raise RuleError(f"{path}: no rule files (*.yar, *.yara) in this directory")
        sources = {f.relative_to(root).as_posix(): f for f in files}
    else:
        open(path, "rb").close()  # unreadable: an OSError naming it
        root = path.resolve().parent
        sources = {"default": path.resolve()}
    resolved: dict[str, Path] = {str(f): f for f in sources.values()}  # name YARA knows -> real file
    refused: list[str] = []

    def include(requested: str, includer: str | None, _namespace: str) -> str | None:
        base = resolved.get(includer or "", root / "_").parent
        target = Path(os.path.realpath(base / requested))
        if not target.is_relative_to(root):
            refused.append(f"include {requested!r} leaves the rules tree {root}")
            return None
        try:
            source = target.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            refused.append(f"include {requested!r}: {exc.strerror}")
            return None
        resolved[requested] = target  # YARA names an included file by the string that included it
        return source

    try:
        rules = yara.compile(filepaths={ns: str(f) for ns, f in sources.items()}, externals=externals,
                             include_callback=include)
    except yara.SyntaxError as exc:
        raise RuleError(_describe(str(exc), resolved, root, refused)) from None
    except yara.Error as exc:
        raise RuleError(f"{path}: {exc}") from None
    return rules, {f: _stamp(f) for f in set(resolved.values())}


def _describe(message: str, resolved: dict[str, Path], root: Path, refused: list[str]) -> str:
    """``FILE line N: MESSAGE`` from YARA's ``FILE(N): MESSAGE``, with FILE made a real path."""
    found = _LOCATION.match(message)
    if found is None:
        return message
    where = resolved.get(found["file"], Path(found["file"]))
    text = f"{where} line {found['line']}: {found['message']}"
    return text + (f" ({refused[-1]})" if refused else "")
