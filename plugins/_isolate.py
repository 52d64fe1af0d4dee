"""Running an in-process parser of untrusted documents in a forked child under an address-space limit.

A pure-Python parser (pdfminer.six) cannot be stopped from allocating what a document asks for: a 1.5 MB
PDF whose stream inflates to 512 MiB takes gigabytes. ``run_limited`` forks, sets ``RLIMIT_AS`` in the
child to its current address space plus ``memory`` bytes (so the limit is what the parse may add, whatever
the worker already holds), runs the function there and sends its JSON result back through a pipe. A
``MemoryError`` in the child is reported as ``MemoryLimit``; any other exception is re-raised in the parent
as ``ParseError`` with the child's message (only JSON crosses the pipe: nothing the child sends is
unpickled). The parent waits in ``select`` (it wakes as soon as data or EOF arrives; the timeout only lets
the plugin's time limit interrupt it) and kills the child in every case it did not reap it. The child dies
with its parent (``PR_SET_PDEATHSIG``), dumps no core and has a CPU-time limit.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
from typing import Any, Callable

from stoq import lifetime

_CHUNK = 1 << 20


class MemoryLimit(Exception):
    """The child ran out of its address-space allowance."""


class ParseError(Exception):
    """The function raised in the child (the message is ``Type: message``), or the child died."""


def address_space() -> int:
    """This process's current virtual memory size, in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit(which: int, value: int) -> None:
    hard = resource.getrlimit(which)[1]
    resource.setrlimit(which, (value if hard == resource.RLIM_INFINITY else min(value, hard),) * 2)


def _child(fn: Callable[[], Any], memory: int, cpu_seconds: int, out: int, parent: int) -> None:
    """In the forked child: limits, the call, its outcome written as JSON; never returns."""
    try:
        lifetime.die_with_parent(parent)
        _limit(resource.RLIMIT_CORE, 0)
        _limit(resource.RLIMIT_CPU, cpu_seconds)
        _limit(resource.RLIMIT_AS, address_space() + memory)
        try:
            outcome: list[Any] = ["ok", fn()]
        except MemoryError:
            outcome = ["memory", None]
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            outcome = ["error", f"{type(exc).__name__}: {exc}"[:2000]]
        data = json.dumps(outcome).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(out, view[:_CHUNK]):]
    finally:
        os._exit(0)


def run_limited(fn: Callable[[], Any], memory: int, cpu_seconds: int) -> Any:
    """``fn()`` run in a forked child allowed ``memory`` more bytes of address space; its JSON result."""
    read, write = os.pipe()
    parent = os.getpid()
    lifetime.prepare()  # prctl looked up here: the child of a process with threads loads no library
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _child(fn, memory, cpu_seconds, write, parent)
    os.close(write)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([read], [], [], 0.5)
            if ready:
                chunk = os.read(read, _CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        os.close(read)
        if pid:  # (the plugin's time limit, or any error here)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if not chunks:
        how = f"signal {-os.waitstatus_to_exitcode(status)}" if os.WIFSIGNALED(status) else \
            f"exit status {os.waitstatus_to_exitcode(status)}"
        raise ParseError(f"the parsing process died ({how}) without a result")
    kind, value = json.loads(b"".join(chunks))
    if kind == "memory":
        raise MemoryLimit(f"the parse needed more than {memory} bytes of address space")
    if kind == "error":
        raise ParseError(value)
    return value
