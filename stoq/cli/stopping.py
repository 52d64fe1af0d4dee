"""A command stopped early: SIGINT, SIGTERM, or its output closed (a broken pipe).

``catch_signals`` makes both signals raise ``Interrupted`` for the rest of the command; the command
catches it where it can stop cleanly (stop the workers, store what it printed) and ends with the
signal's exit code (``STOPPED``), as a shell reports it. The handler fires once: the clean-up that
follows is not interrupted again.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Optional

from stoq.cli import ExitCode


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a scan: raised by ``_interrupt`` where the main thread is. A
    ``KeyboardInterrupt``, so that code which lets Ctrl-C through (the plugin registry) lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    """One-shot: the clean-up that follows (stopping the workers, storing) is not interrupted again."""
    ignore_signals()
    raise Interrupted(signum)


def ignore_signals() -> None:
    """SIGINT and SIGTERM are ignored from now on (the clean-up of a stopped command)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


STOPPED = {signal.SIGINT: ExitCode.INTERRUPTED, signal.SIGTERM: ExitCode.TERMINATED}
Handlers = Optional[tuple[Any, Any]]


def catch_signals() -> Handlers:
    """SIGINT and SIGTERM raise ``Interrupted`` from now on (in the main thread only, where Python
    delivers signals), unless ignored already (a shell's background job ignores SIGINT); returns the
    handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    saved = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    for signum, handler in zip((signal.SIGINT, signal.SIGTERM), saved):
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _interrupt)
    return saved


def restore_signals(saved: Handlers) -> None:
    if saved is not None:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])


WHY = {ExitCode.OUTPUT_CLOSED: "output closed", ExitCode.INTERRUPTED: "interrupted", ExitCode.TERMINATED: "terminated"}


def discard_stdout() -> None:
    """After a broken pipe: what is left in stdout's buffer can never be written; it goes to the null
    device instead, so that the flush at exit does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
