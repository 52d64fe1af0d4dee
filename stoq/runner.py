"""Run one plugin on one payload: time limit, error capture, timing.

Time limits come in two stages, as Celery's soft and hard limits do:
- soft: a watchdog thread raises ``PluginTimeout`` in the thread running the plugin when its time is
  up. ``PluginTimeout`` derives from ``BaseException``, so a plugin's ``except Exception`` cannot
  swallow it. It fires at the next Python bytecode, so it stops Python loops, not native code;
- hard: a plugin stuck in native code is killed with its process by the supervisor (the embedded
  pool, or Celery's hard time limit), which reads what was running from ``Activity``. The scan then
  goes on without that plugin on that payload, and records a ``timeout`` or ``crash`` error.

No SIGALRM: it works only in the main thread and cannot interrupt native code either.
"""

from __future__ import annotations

import ctypes
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from stoq.model import ScanErrorEntry, json_safe, text
from stoq.plugin import Extracted, Result, ToolMissing, set_call_deadline


#: Seconds a plugin may run past its time limit before the hard stage kills its process (the embedded
#: pool's supervisor, ``stoq.tasks.guard`` in a Celery worker): the soft stage's time to stop it first.
HARD_GRACE = 5.0


class PluginTimeout(BaseException):
    """Raised inside a plugin whose time is up. Not an ``Exception``: plugins cannot catch it by accident."""


class Watchdog:
    """One daemon thread per process that raises ``PluginTimeout`` in an overrunning call.

    Starting and ending a call costs two attribute writes and a lock; the thread polls (every 0.1 s)
    instead of being woken for each call.
    """

    POLL = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: tuple[int, float, int] | None = None  # (token, deadline, thread id)
        self._token = 0
        self._fired = 0
        self._thread: threading.Thread | None = None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="stoq-watchdog", daemon=True)
            self._thread.start()

    def begin(self, seconds: float) -> int:
        self._ensure_thread()
        with self._lock:
            self._token += 1
            self._active = (self._token, time.monotonic() + seconds, threading.get_ident())
            return self._token

    def end(self, token: int) -> None:
        with self._lock:
            if self._active is not None and self._active[0] == token:
                self._active = None
            if self._fired == token:
                # Injected but maybe not raised yet: clear it so it cannot fire outside the call.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)

    def _run(self) -> None:
        while True:
            time.sleep(self.POLL)
            with self._lock:
                active = self._active
                if active is None or time.monotonic() < active[1] or self._fired == active[0]:
                    continue
                self._fired = active[0]
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(active[2]), ctypes.py_object(PluginTimeout))


WATCHDOG = Watchdog()


@dataclass(slots=True)
class Outcome:
    """What running one plugin gave: a result, or an error entry (never both)."""

    result: Result | None
    error: ScanErrorEntry | None
    seconds: float


#: The error kind of a plugin that needs an external program which is not installed (``ToolMissing``).
TOOL_MISSING = "tool-missing"
#: Error kinds that also flag their payload, so that they can be counted and searched like flags.
KIND_FLAGS = {TOOL_MISSING: "tool:missing"}


#: What a call given to ``run_plugin`` returns when the plugin declined the payload (``accepts``).
DECLINED = object()


def as_result(value: Any) -> Result:
    if isinstance(value, Result):
        return value
    if value is None or isinstance(value, dict):
        return Result(data=value)
    raise TypeError(f"plugin returned {type(value).__name__}; expected Result, dict or None")


def checked(result: Result) -> Result:
    """A plugin's result in the shape the framework relies on, or ``TypeError``/``ValueError``
    (then recorded against the plugin): output made JSON-safe under the text rule, children as
    ``Extracted`` with bytes, a name (text) or None and a JSON-safe dict of metadata, flags as text."""
    children = []
    for child in result.children:
        if not isinstance(child, Extracted):
            raise TypeError(f"plugin returned a child of type {type(child).__name__}; expected Extracted")
        content = child.content
        if isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        if not isinstance(content, bytes):
            raise TypeError(f"plugin returned a child whose content is {type(content).__name__}; expected bytes")
        name = child.filename
        if name is not None and not isinstance(name, (str, bytes)):
            raise TypeError(f"plugin returned a child whose filename is {type(name).__name__}; expected str")
        if not isinstance(child.meta, dict):
            raise TypeError(f"plugin returned a child whose meta is {type(child.meta).__name__}; expected dict")
        children.append(Extracted(content, None if name is None else text(name), json_safe(child.meta)))
    spent = result.extracted_bytes
    if spent is not None and (not isinstance(spent, int) or isinstance(spent, bool) or spent < 0):
        raise TypeError(f"plugin returned extracted_bytes {spent!r}; expected an int >= 0 or None")
    return Result(json_safe(result.data), children, [text(str(flag)) for flag in result.flags], spent)


def run_plugin(plugin_name: str, call: Callable[[], Any], payload_id: str, timeout: float) -> Outcome | None:
    """Calls ``call()`` under the soft time limit and turns every failure into an error entry: an
    exception (``SystemExit`` included), a timeout, output the framework cannot use (``checked``).
    None when ``call`` returns ``DECLINED``."""
    start = time.perf_counter()
    token = WATCHDOG.begin(timeout)
    set_call_deadline(time.monotonic() + timeout)
    try:
        try:
            value = call()
        finally:
            set_call_deadline(None)
            WATCHDOG.end(token)
        if value is DECLINED:
            return None
        result = checked(as_result(value))
    except PluginTimeout:
        WATCHDOG.end(token)
        return Outcome(None, ScanErrorEntry(payload_id, plugin_name, "timeout", f"exceeded {timeout:g} s"),
                       time.perf_counter() - start)
    except MemoryError:
        return Outcome(None, ScanErrorEntry(payload_id, plugin_name, "error", "MemoryError"),
                       time.perf_counter() - start)
    except ToolMissing as exc:  # what to install, not where in Python it was noticed
        return Outcome(None, ScanErrorEntry(payload_id, plugin_name, TOOL_MISSING, str(exc)),
                       time.perf_counter() - start)
    except (Exception, SystemExit) as exc:  # the framework owns error capture: a plugin raises, we record it
        return Outcome(None, ScanErrorEntry(payload_id, plugin_name, "error", describe_exception(exc)),
                       time.perf_counter() - start)
    return Outcome(result, None, time.perf_counter() - start)


def describe_exception(exc: BaseException) -> str:
    """``Type: message (at file:line)``: enough to find it, short enough to store."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    message = str(exc)
    if len(message) > 1000:
        message = message[:1000] + "..."
    return f"{type(exc).__name__}: {message}{where}"
