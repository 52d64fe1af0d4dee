"""One long-lived ExifTool (``-stay_open True -@ -``) per worker process, for the ``exif`` worker.

Starting ExifTool (Perl, a few hundred modules) costs far more than reading one file's metadata, so
the process stays up and reads one argument list per payload from its stdin, each ended by
``-executeN``; its answer on stdout ends with ``{readyN}``, and ``-echo4 {readyN}`` puts the same
marker at the end of its stderr. Both pipes are read with ``poll`` under a deadline and a byte cap.

Why not pyexiftool: its ``execute`` blocks on the pipe with no time limit and no output cap, so a
hung ExifTool would hang the worker until the hard time limit killed the whole process; this module
needs kill-and-restart on a deadline, which is the part pyexiftool lacks.

A run that does not end cleanly (deadline, cap, ExifTool dying, or the framework's soft time limit
raised inside the read) leaves the process in an unknown state: it is killed with its process group,
and the next payload starts a fresh one. The process is also replaced when it is found dead, and
when the object is used in another process than the one that started it (a forked worker never
shares its parent's pipes). ExifTool runs without a shell, in a new session, in a private scratch
directory (also its HOME), with no configuration file (``-config ""``), no core dumps, and dies
with the thread that started it (``stoq.lifetime``).
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import select
import subprocess
import time
from typing import Any, Callable

from stoq import lifetime
from stoq.plugin import Tool, tool_path
from stoq_plugins._process import kill_group
from stoq_plugins._scratch import make as make_scratch
from stoq_plugins._scratch import remove_stale, rmtree

EXIFTOOL = Tool("exiftool", "libimage-exiftool-perl", ("-ver",))
KIND = "exif"
#: Seconds allowed for ExifTool to start and answer its first (empty) request.
START_TIMEOUT = 30.0
#: Most bytes of stderr kept (warnings about the payload are in the JSON; stderr has the rest).
STDERR_BYTES = 1 << 16


class ExifToolError(RuntimeError):
    """ExifTool could not read the payload: its process died, or it answered something other than JSON."""


class ExifToolTimeout(ExifToolError):
    """ExifTool did not answer within the time limit: it was killed, and is restarted for the next payload."""


class OutputLimit(ExifToolError):
    """ExifTool's answer passed the byte cap: it was killed, and is restarted for the next payload."""


def _preexec() -> Callable[[], None]:
    die_with_worker = lifetime.preexec()

    def child() -> None:
        die_with_worker()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return child


class ExifTool:
    """A stay-open ExifTool, started on first use in each process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.owner = 0  # pid of the process that started ``proc``
        self.scratch: str | None = None
        self.count = 0  # requests sent (the N of -executeN)
        self.starts = 0

    @staticmethod
    def remove_stale() -> list[str]:
        """Removes the scratch directories of ExifTools whose worker was killed."""
        return remove_stale(KIND)

    def alive(self) -> bool:
        return self.proc is not None and self.owner == os.getpid() and self.proc.poll() is None

    def start(self) -> None:
        self.stop()
        self.scratch = make_scratch(KIND)
        env = {"PATH": tool_path(), "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": self.scratch}
        argv = ["exiftool", "-config", "", "-stay_open", "True", "-@", "-"]
        try:
            self.proc = subprocess.Popen(argv, shell=False, cwd=self.scratch, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_preexec(),
                                         start_new_session=True)
        except FileNotFoundError:
            self._discard()
            raise EXIFTOOL.missing() from None
        if self.starts == 0:
            atexit.register(self.stop)  # (a forked worker leaving by os._exit skips it: remove_stale then)
        self.owner = os.getpid()
        self.starts += 1
        self._request(["-ver"], START_TIMEOUT, 1 << 16)  # answers once its modules are loaded

    def _discard(self) -> None:
        """Forgets the process; kills it only if this process started it (a fork's copy is the parent's)."""
        if self.proc is not None:
            if self.owner == os.getpid():
                kill_group(self.proc)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        if self.scratch is not None and self.owner in (0, os.getpid()) and os.path.isdir(self.scratch):
            rmtree(self.scratch)
        self.proc, self.scratch, self.owner = None, None, 0

    def stop(self) -> None:
        """Kills this process's ExifTool (if any) and removes its scratch directory."""
        self._discard()

    def _request(self, args: list[str], timeout: float, max_output: int) -> tuple[bytes, bytes]:
        """Sends one argument list; returns ExifTool's stdout and stderr for it. Any failure kills it."""
        proc = self.proc
        assert proc is not None and proc.stdin and proc.stdout and proc.stderr
        self.count += 1
        marker = f"{{ready{self.count}}}".encode()
        lines = [*args, "-echo4", marker.decode(), f"-execute{self.count}"]
        done = False
        try:
            if any("\n" in arg for arg in lines):
                raise ValueError("an ExifTool argument may not hold a newline")
            try:
                proc.stdin.write(("\n".join(lines) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise ExifToolError(f"exiftool died (exit status {proc.poll()})") from exc
            out, err = self._read(proc, marker, time.monotonic() + timeout, max_output, timeout)
            done = True
            return out, err
        finally:
            if not done:
                self._discard()

    @staticmethod
    def _read(proc: subprocess.Popen[bytes], marker: bytes, deadline: float, max_output: int,
              timeout: float) -> tuple[bytes, bytes]:
        assert proc.stdout and proc.stderr
        buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
        ended = {fd: False for fd in buffers}
        poller = select.poll()
        for fd in buffers:
            poller.register(fd, select.POLLIN | select.POLLHUP)
        while not all(ended.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExifToolTimeout(f"exiftool did not answer within {timeout:g} s: killed")
            for fd, _ in poller.poll(min(left, 0.1) * 1000):  # short steps let the soft time limit in
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise ExifToolError(f"exiftool died (exit status {proc.wait()})")
                buffer = buffers[fd]
                buffer.extend(chunk)
                if fd == proc.stdout.fileno() and len(buffer) > max_output + len(marker) + 2:
                    raise OutputLimit(f"exiftool's output passed {max_output} bytes: killed")
                if len(buffer) > max(max_output, STDERR_BYTES) * 2:
                    raise OutputLimit(f"exiftool's messages passed {max_output} bytes: killed")
                ended[fd] = buffer.rstrip().endswith(marker)
        out, err = (bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]))
        return out.rstrip()[:-len(marker)], err.rstrip()[:-len(marker)][:STDERR_BYTES]

    def read(self, content: bytes, suffix: str, args: list[str], timeout: float,
             max_output: int) -> tuple[dict[str, Any], str]:
        """ExifTool's JSON object for ``content`` (written to the scratch directory as ``payload``
        plus ``suffix``, since ExifTool types some formats by extension) and its stderr text."""
        if not self.alive():
            self.start()
        assert self.scratch is not None
        path = os.path.join(self.scratch, "payload" + suffix)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(content)
            out, err = self._request([*args, "-j", path], timeout, max_output)
        finally:
            if self.scratch is not None:  # (gone when the run failed and ExifTool was discarded)
                os.unlink(path)
        try:
            found = json.loads(out.decode("utf-8", "replace")) if out.strip() else []
        except ValueError as exc:
            raise ExifToolError(f"exiftool's answer is not JSON: {exc}") from None
        if not (isinstance(found, list) and len(found) == 1 and isinstance(found[0], dict)):
            raise ExifToolError(f"exiftool read nothing: {err.decode('utf-8', 'replace').strip()[:300]}")
        return found[0], err.decode("utf-8", "replace").strip()
