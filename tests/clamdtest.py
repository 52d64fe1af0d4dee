"""A clamd of the tests' own: its configuration, socket and signature database under a temporary
directory, no freshclam, no network. The database holds three signatures made here: an MD5 hash
signature (``.hdb``) of a file generated from a seed, a body signature (``.ndb``) of a marker string,
and one of the EICAR test string (assembled from pieces, never stored whole)."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time
from pathlib import Path

#: The EICAR anti-virus test file, assembled so that no file of the repository holds it whole.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-" + b"ANTIVIRUS-TEST-FILE!$H+H*"
MARKER = b"stoq-clamav-test-marker:" + bytes(range(0x41, 0x5b))
#: StreamMaxLength and MaxFileSize of the test clamd (bytes).
STREAM_MAX = 256 * 1024
FILE_MAX = 128 * 1024


def generated() -> bytes:
    """A file of 10,000 pseudo-random bytes (SHA-256 in counter mode), the target of the hash signature."""
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(313))[:10_000]


class Clamd:
    """clamd in the foreground on ``root/clamd.sock`` with ``root/db``; ``start`` waits for its PONG."""

    def __init__(self, root: Path) -> None:
        self.root, self.socket = root, root / "clamd.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        db = root / "db"
        db.mkdir()
        target = generated()
        (db / "own.hdb").write_text(f"{hashlib.md5(target).hexdigest()}:{len(target)}:Test.Own.Generated\n")
        (db / "own.ndb").write_text(f"Test.Own.Marker:0:*:{MARKER.hex()}\nTest.Own.EICAR:0:0:{EICAR.hex()}\n")
        (root / "clamd.conf").write_text(
            f"LocalSocket {self.socket}\nDatabaseDirectory {db}\nForeground yes\nLogFile {root / 'clamd.log'}\n"
            f"StreamMaxLength {STREAM_MAX}\nMaxFileSize {FILE_MAX}\nAlertExceedsMax yes\nMaxThreads 4\n"
            "SelfCheck 0\n")

    def start(self) -> None:
        self.proc = subprocess.Popen(["clamd", "-c", str(self.root / "clamd.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(600):
            if self.ping():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (self.root / "clamd.log").read_text() if (self.root / "clamd.log").exists() else ""
        self.stop()
        raise RuntimeError(f"clamd did not start: {log[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(self.socket))
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None
