"""Private scratch directories for external tools, and removal of those a killed worker left behind.

A scratch directory is always removed when its extraction ends, even on a soft timeout, but not when
the worker process itself is killed (hard time limit, OOM killer, a crash): the copy of a hostile
payload and whatever a tool wrote would then stay in ``TMPDIR``. Each directory's name carries the
pid of the process that made it (``stoq-<kind>-<pid>-<random>``), and a plugin's ``setup`` (run by
every new worker process) removes the directories of processes that no longer exist.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from typing import Callable

_NAME = re.compile(r"^stoq-(?P<kind>[a-z]+)-(?P<pid>\d+)-")


def make(kind: str) -> str:
    """A new private directory (mode 0700) under ``TMPDIR``, named after ``kind`` and this process."""
    return tempfile.mkdtemp(prefix=f"stoq-{kind}-{os.getpid()}-")


def rmtree(path: str) -> None:
    """Removes ``path``, including read-only directories a tool made, never following links."""
    for root, dirs, _ in os.walk(path, followlinks=False):
        for name in dirs:
            full = os.path.join(root, name)
            if stat.S_ISDIR(os.lstat(full).st_mode):
                os.chmod(full, 0o700)
    shutil.rmtree(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(kind: str, before: Callable[[str], None] | None = None) -> list[str]:
    """Removes this user's ``kind`` scratch directories whose process is gone; returns their paths.

    ``before(path)`` runs first on each (to stop a helper that may still use it, such as gpg-agent).
    A directory that cannot be removed is left for the next sweep.
    """
    root = tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None or match["kind"] != kind:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or _alive(int(match["pid"])):
            continue
        try:
            if before is not None:
                before(entry.path)
            rmtree(entry.path)
            removed.append(entry.path)
        except OSError:
            continue
    return removed
