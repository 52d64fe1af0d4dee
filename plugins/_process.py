"""Waiting for an external tool's exit, and killing its process group: for every plugin that runs a
tool (``decompress``'s ``tools``, ``gpg``)."""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import time
from typing import Callable

#: Longest pause between two looks at a running tool's output directory (its exit is noticed at once).
WATCH_EVERY = 0.05


def exit_fd(proc: subprocess.Popen) -> int | None:
    """A pidfd of the tool, readable once it has exited (None where the system has none)."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return None


def wait_tool(proc: subprocess.Popen, timeout: float, watch: Callable[[], str | None] | None = None) -> str | None:
    """Waits for a tool to exit, its ``timeout`` (seconds) to pass, or ``watch()`` (called every 5 to 50 ms
    while it runs; the thread wakes as often without one, so that a ``PluginTimeout`` reaches it) to name
    a cap. Returns None once the tool has exited (and is reaped), else the cap: ``limit:tool-time`` or
    what ``watch`` said; the tool is then still running, for the caller to kill.

    The exit is noticed at once: the thread sleeps in ``poll`` on a pidfd of the tool, which the
    kernel wakes when it exits (``Popen.wait(timeout)`` sleeps in steps instead). Without pidfds
    (not Linux, or before 5.3) it falls back to those steps."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    fd = exit_fd(proc)
    poller = None
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "limit:tool-time"
            step = min(left, delay)  # (short steps also let the plugin's soft time limit in)
            if poller is not None:
                if poller.poll(math.ceil(step * 1000)):
                    proc.wait()
                    return None
            else:
                try:
                    proc.wait(step)
                    return None
                except subprocess.TimeoutExpired:
                    pass
            stopped = watch() if watch is not None else None
            if stopped:
                return stopped
            delay = min(delay * 2, WATCH_EVERY)
    finally:
        if fd is not None:
            os.close(fd)


def kill_group(proc: subprocess.Popen) -> None:
    """Kills a tool started in its own session, with everything it started, and reaps it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
