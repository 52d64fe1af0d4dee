"""A client of clamd's ``INSTREAM`` command, for the ``clamav`` worker.

The protocol (clamd(8)): connect to clamd's UNIX socket or TCP port, send ``zINSTREAM\\0``, then the
payload as chunks each preceded by its length (4 bytes, big-endian), then a zero length; clamd answers
one NUL-terminated line: ``stream: OK``, ``stream: NAME FOUND`` or ``... ERROR``. Beyond its
``StreamMaxLength`` clamd answers ``INSTREAM size limit exceeded. ERROR`` and closes the connection,
possibly while chunks are still being sent: the answer is read after a broken pipe too.

One connection per payload: nothing is kept between scans, so a clamd that was restarted (or down and
back) is simply reached again by the next payload, with no reconnection state in the worker. No
library: the maintained clients on PyPI (clamav-client, clamdpy) wrap the same few lines, and a
client of our own reads clamd's limit answers, even after a connection clamd closed mid-stream, as
the named flags this worker reports.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass

CHUNK = 1 << 16
#: Most bytes read of clamd's answer (a line naming the signatures).
MAX_REPLY = 1 << 16
SIZE_LIMIT = "INSTREAM size limit exceeded"
#: What clamd's ``AlertExceedsMax`` reports as a detection when one of its own limits stopped the scan.
LIMIT_PREFIX = "Heuristics.Limits.Exceeded."


class ClamdUnavailable(ConnectionError):
    """clamd could not be reached, or closed the connection without an answer."""


class ClamdError(RuntimeError):
    """clamd answered with an error of its own (other than its stream size limit)."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where clamd listens: a UNIX socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int = 3310

    def __str__(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        try:
            if self.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.path)
                except BaseException:
                    sock.close()
                    raise
                return sock
            return socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ClamdUnavailable(f"clamd is not answering on {self}: {exc.strerror or exc}") from None


def _reply(sock: socket.socket, where: Address) -> str:
    """Everything clamd answers before it closes the connection (one line per signature with
    ``AllMatchScan``, each ended by NUL), at most ``MAX_REPLY`` bytes."""
    data = bytearray()
    while len(data) < MAX_REPLY:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise ClamdUnavailable(f"clamd on {where} did not answer in time") from None
        except OSError as exc:
            if data:  # answered, then reset the connection (data of ours it did not read)
                break
            raise ClamdUnavailable(f"clamd on {where} closed the connection: {exc.strerror or exc}") from None
        if not chunk:
            break
        data.extend(chunk)
    if not data:
        raise ClamdUnavailable(f"clamd on {where} closed the connection without an answer")
    return "\n".join(line.strip() for line in data.decode("utf-8", "replace").replace("\0", "\n").splitlines()
                     if line.strip())


def command(where: Address, name: str, timeout: float) -> str:
    """One simple command (``VERSION``, ``PING``): clamd's answer."""
    with where.connect(timeout) as sock:
        sock.sendall(b"z" + name.encode() + b"\0")
        return _reply(sock, where)


def instream(where: Address, content: bytes, timeout: float) -> str:
    """Sends ``content`` with ``INSTREAM``; clamd's answer line."""
    with where.connect(timeout) as sock:
        try:
            sock.sendall(b"zINSTREAM\0")
            view = memoryview(content)
            answered = select.poll()
            answered.register(sock, select.POLLIN)
            for start in range(0, len(view), CHUNK):
                if answered.poll(0):  # clamd answers early only to refuse the rest (its size limit)
                    return _reply(sock, where)
                part = view[start:start + CHUNK]
                sock.sendall(struct.pack(">I", len(part)) + part)
            sock.sendall(b"\0\0\0\0")
        except socket.timeout:
            raise ClamdUnavailable(f"clamd on {where} stopped reading in time") from None
        except OSError:  # closed early: clamd's answer (a limit) says why
            pass
        return _reply(sock, where)


@dataclass(slots=True)
class Verdict:
    """clamd's answer read: signatures found, the limits it reported, the raw line."""

    signatures: list[str]
    limits: list[str]
    reply: str


def read_reply(reply: str) -> Verdict:
    """``stream: OK``, ``stream: NAME FOUND`` (one line per signature with ``AllMatchScan``), or a limit."""
    signatures: list[str] = []
    limits: list[str] = []
    if reply.startswith(SIZE_LIMIT):
        return Verdict([], ["stream-size"], reply)
    for line in reply.splitlines():
        body = line.split(": ", 1)[1] if line.startswith("stream") and ": " in line else line
        if body == "OK":
            continue
        if body.endswith(" FOUND"):
            name = body[:-len(" FOUND")]
            if name.startswith(LIMIT_PREFIX):
                limits.append(name[len(LIMIT_PREFIX):].lower())
            elif name not in signatures:
                signatures.append(name)
        else:
            raise ClamdError(f"clamd: {line.strip()[:300]}")
    return Verdict(signatures, limits, reply)
