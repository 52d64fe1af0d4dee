"""Child processes that die with their parent, so that no process of a scan outlives it.

An embedded pool's worker process and an external tool a plugin runs are children of the process that
started them. Should that parent be killed (SIGKILL, the OOM killer), nothing would tell them to stop:
a worker would wait for work forever, a tool would run to its own end. On Linux the child asks the
kernel for SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that the parent is
still the one that forked it (it may have died before the request). Elsewhere only the check is made,
and a worker also checks its parent while it waits for work (``parent_alive``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from typing import Callable

PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, or None where there is none. Looked up in the parent (``preexec``): a forked
    child then only calls it."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def prepare() -> None:
    """Looks ``prctl`` up here, in the parent, before it forks: a child of a process with threads must
    not load libraries (``dlopen`` may wait for a lock a thread held at the fork)."""
    _prctl()


def die_with_parent(parent: int) -> None:
    """In a child forked by process ``parent`` (which called ``prepare``): be killed when the parent
    dies; exit at once if it has died already."""
    prctl = _prctl()
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def preexec() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the started program die with this process."""
    parent = os.getpid()
    prepare()

    def child() -> None:
        die_with_parent(parent)
    return child


def parent_alive(parent: int) -> bool:
    """Whether the process that forked this one (pid ``parent``) is still its parent."""
    return os.getppid() == parent
