"""The inputs of ``stoq scan`` and ``stoq submit``: the regular files named or found, and every input
that is not scanned, named with its true reason (docs/cli.md, exit code 3)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from stoq.filters import FileFilter

KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a file that is neither a regular file nor a directory is, in words."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def reason(path: str | Path, exc: OSError) -> str:
    """Why ``path`` could not be used, in the user's words (``strerror``, lower case); a symbolic link
    whose target is missing is said to be one."""
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return "no such file or directory (a symbolic link whose target is missing)"
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links (a loop?)"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def collect(paths: list[Path], recursive: bool, filters: FileFilter | None = None) -> tuple[list[Path], list[str]]:
    """Regular files named or found under the given paths (sorted walk; symlinks inside directories are
    not followed), and the problems met: every input that is not scanned and is not a symbolic link
    inside a directory is named, with the reason (missing, unreadable, not a regular file, a
    subdirectory without ``--recursive``). Nothing is opened here, so a FIFO cannot block the scan.
    ``filters`` (``stoq.filters``) leave files out, named or found; it counts them, they are no problem."""
    files: list[Path] = []
    problems: list[str] = []
    for path in paths:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            problems.append(f"{path}: {reason(path, exc)}")
            continue
        if stat.S_ISREG(mode):
            if filters is None or not filters.active or filters.keep(str(path.absolute())):
                files.append(path.absolute())
        elif stat.S_ISDIR(mode):
            _walk(path.absolute(), recursive, files, problems, filters)
        else:
            problems.append(f"{path}: not a regular file or directory ({kind_of(mode)}): not scanned")
    return files, problems


def _walk(top: Path, recursive: bool, files: list[Path], problems: list[str],
          filters: FileFilter | None = None) -> None:
    """The files under ``top`` in the documented order: a directory's regular files (sorted by name),
    then each subdirectory's (sorted), depth first."""
    active = filters is not None and filters.active
    stack = [top]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{here}: {reason(here, exc)}: not scanned")
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_symlink():
                    continue  # documented: links inside directories are not followed
                if entry.is_file(follow_symlinks=False):
                    if not active or filters.keep(  # type: ignore[union-attr]
                            entry.path, entry.stat(follow_symlinks=False) if filters.needs_stat else None,  # type: ignore[union-attr]
                            os.path.relpath(entry.path, top)):
                        files.append(Path(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(Path(entry.path))
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    problems.append(f"{entry.path}: not a regular file or directory ({kind_of(mode)}): not scanned")
            except OSError as exc:
                problems.append(f"{entry.path}: {reason(entry.path, exc)}: not scanned")
        if recursive:
            stack.extend(reversed(subdirs))
        elif subdirs:
            problems.append(f"{here}: {len(subdirs)} subdirector{'y' if len(subdirs) == 1 else 'ies'} not scanned "
                            "(without --recursive)")
