"""Running ``gpg`` (GnuPG 2) on one OpenPGP message, and reading what its ``--status-fd`` lines say.

Input is hostile. Each run gets a private scratch directory (``stoq_plugins._scratch``, mode 0700) holding a
copy of the payload and a fresh GNUPGHOME (mode 0700) into which the configured keyring is imported; the
user's own ``~/.gnupg`` is never read. gpg runs without a shell, in a new session, with a cleaned
environment (HOME and GNUPGHOME in the scratch directory), no core dumps, no network (dirmngr disabled,
no key retrieval), under a time limit, its process group killed at the end. The passphrase goes through
stdin (``--pinentry-mode loopback --passphrase-fd 0``), never on the command line. The decrypted data is
read from gpg's stdout up to a byte cap, gpg killed beyond (its own ``--max-output`` would buffer the
whole output first). Afterwards the gpg-agent of that
GNUPGHOME is killed (``gpgconf --kill all``) and the scratch directory removed, whatever happened; the
``gpgconf`` calls are skipped only when every gpg run ended on its own and left no socket in GNUPGHOME
(no agent was started: a signed message, or none).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote

from stoq import lifetime
from stoq.model import iso
from stoq.plugin import Tool, tool_path
from stoq_plugins._scratch import make as make_scratch
from stoq_plugins._scratch import remove_stale
from stoq_plugins._process import kill_group

PREFIX = "[GNUPG:] "
#: Longest GNUPGHOME: gpg-agent's sockets (``S.gpg-agent.browser``) live there, and AF_UNIX paths are short.
MAX_HOME = 86
_STATUS_BYTES = 1 << 20
#: gpg-error codes (low 16 bits of an ``ERROR`` status line's code) meaning the passphrase was wrong or missing.
PASSPHRASE_ERRORS = {11, 177}
#: Status keywords that end a signature's check, with their result.
SIG_RESULTS = ("GOODSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "BADSIG", "ERRSIG")
COMMON = ["--batch", "--no-tty", "--no-greeting", "--disable-dirmngr", "--no-auto-key-retrieve",
          "--no-auto-key-locate", "--pinentry-mode", "loopback"]


class GpgError(ValueError):
    """gpg could read nothing of the input (no OpenPGP message)."""


def _when(text: str) -> str | None:
    """An epoch timestamp (gpg's status format) as ISO-8601; None for 0, empty or ISO-less values."""
    try:
        seconds = int(text)
    except ValueError:
        return None
    return iso(datetime.fromtimestamp(seconds, timezone.utc)) if seconds > 0 else None


@dataclass(slots=True)
class Status:
    """What the status lines of one run say."""

    encrypted: bool = False
    key_ids: list[str] = field(default_factory=list)
    signatures: list[dict[str, Any]] = field(default_factory=list)
    literal: dict[str, Any] | None = None
    no_seckey: bool = False
    bad_passphrase: bool = False
    decrypted: bool = False
    failed: bool = False
    seen: bool = False  # any line telling of an OpenPGP message
    imported: int = 0  # keys read by --import (IMPORT_RES)

    def _sig(self) -> dict[str, Any]:
        if not self.signatures:
            self.signatures.append({"key_id": None, "status": None, "user_id": None, "fingerprint": None,
                                    "created": None})
        return self.signatures[-1]

    def feed(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        args = rest.split(" ")
        if word in ("ENC_TO", "NEED_PASSPHRASE_SYM", "BEGIN_DECRYPTION"):
            self.encrypted = self.seen = True
            if word == "ENC_TO" and args[0] not in self.key_ids:
                self.key_ids.append(args[0])
        elif word == "IMPORT_RES" and args[0].isdigit():
            self.imported = int(args[0])
        elif word == "NO_SECKEY":
            self.no_seckey = True
        elif word in ("BAD_PASSPHRASE", "MISSING_PASSPHRASE"):
            self.bad_passphrase = True
        elif word == "ERROR" and len(args) > 1 and args[1].split("_")[0].isdigit():  # "67108875", "11_BAD_..."
            self.bad_passphrase |= int(args[1].split("_")[0]) & 0xFFFF in PASSPHRASE_ERRORS
        elif word == "DECRYPTION_OKAY":
            self.decrypted = True
        elif word == "DECRYPTION_FAILED":
            self.failed = True
        elif word == "PLAINTEXT":
            self.seen = True
            fmt = chr(int(args[0], 16)) if args[0] and all(c in "0123456789abcdefABCDEF" for c in args[0]) else None
            name = unquote(rest.split(" ", 2)[2]) if len(args) > 2 else ""
            self.literal = {"filename": name or None, "format": fmt, "created": _when(args[1] if len(args) > 1 else ""),
                            "size": None}
        elif word == "PLAINTEXT_LENGTH" and self.literal is not None and args[0].isdigit():
            self.literal["size"] = int(args[0])
        elif word == "NEWSIG":
            self.seen = True
            self.signatures.append({"key_id": None, "status": None, "user_id": (unquote(rest) or None),
                                    "fingerprint": None, "created": None})
        elif word in SIG_RESULTS:
            self.seen = True
            sig = self._sig()
            sig["key_id"], sig["status"] = args[0], word
            if word == "ERRSIG" and len(args) >= 7:
                sig["created"], sig["fingerprint"] = _when(args[4]), args[6] if args[6] != "-" else None
            elif word != "ERRSIG" and len(args) > 1:
                sig["user_id"] = unquote(rest.split(" ", 1)[1])
        elif word == "NO_PUBKEY":
            sig = self._sig()
            if sig["status"] in (None, "ERRSIG"):
                sig["key_id"], sig["status"] = args[0], word
        elif word == "VALIDSIG" and len(args) >= 3:
            sig = self._sig()
            sig["fingerprint"], sig["created"] = args[9] if len(args) >= 10 else args[0], _when(args[2])


@dataclass(slots=True)
class GpgRun:
    """One run: the status, the decrypted data (None if cut), the cap that stopped gpg, its messages."""

    status: Status
    data: bytes | None
    stopped: str | None
    code: int
    log: str


#: The program run here (``gpgconf``, which stops its agent, comes with it).
GPG = Tool("gpg", "gnupg")



def _preexec() -> Callable[[], None]:
    """No core dump; and gpg dies with its worker (a killed worker: the scan was stopped)."""
    die_with_worker = lifetime.preexec()

    def child() -> None:
        die_with_worker()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return child


def stop_agent(root: str) -> None:
    """Stops the gpg-agent of the scratch directory ``root`` and removes its socket directory."""
    home = os.path.join(root, "h")
    env = {"PATH": tool_path(), "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": root, "GNUPGHOME": home}
    for action in ("--kill", "--remove-socketdir"):
        argv = ["gpgconf", "--homedir", home, action] + (["all"] if action == "--kill" else [])
        try:
            subprocess.run(argv, env=env, cwd=root, stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                           start_new_session=True, check=False)
        except (OSError, subprocess.TimeoutExpired):
            pass


def sockets_in_home() -> bool:
    """Whether gpg puts its daemons' sockets in GNUPGHOME: it does when the system has no per-user
    runtime directory (``/run/user/UID``, ``/var/run/user/UID``), as in containers and services."""
    uid = os.getuid()
    return not any(os.path.isdir(f"{base}/{uid}") for base in ("/run/user", "/var/run/user"))


def agent_may_run(home: str) -> bool:
    """Whether a daemon (gpg-agent, or scdaemon/keyboxd through it) may be running for ``home``: it made
    its socket there, or its sockets live elsewhere (then only ``gpgconf`` can tell)."""
    if not sockets_in_home():
        return True
    try:
        return any(name.startswith("S.") for name in os.listdir(home))
    except FileNotFoundError:
        return False


def remove_stale_homes() -> list[str]:
    """Removes the scratch directories of gpg runs whose worker was killed (their agent stopped first)."""
    return remove_stale("gpg", before=stop_agent)


class Gpg:
    """A scratch directory with a private GNUPGHOME; use as a context manager."""

    def __init__(self, timeout: float, max_output: int) -> None:
        self.timeout, self.max_output = timeout, max_output

    def __enter__(self) -> Gpg:
        self.root = make_scratch("gpg")  # mode 0700
        self.home = os.path.join(self.root, "h")
        if len(self.home) > MAX_HOME:
            os.rmdir(self.root)
            raise OSError(f"temporary directory {self.root!r} too long for gpg-agent's sockets: set TMPDIR")
        os.mkdir(self.home, 0o700)
        # The agent re-protects imported secret keys on first use; calibrating a strong S2K count costs a
        # second per scan, for keys kept only in this directory, deleted after the scan: use the lowest.
        with open(os.path.join(self.home, "gpg-agent.conf"), "x") as conf:
            conf.write("s2k-count 65536\n")
        self.env = {"PATH": tool_path(), "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": self.root,
                    "GNUPGHOME": self.home}
        self.deadline = time.monotonic() + self.timeout
        self.interrupted = False  # a gpg run was killed: it may have been starting an agent
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            # gpg waits for the agent it starts to listen on its socket, so after runs that ended on
            # their own, no socket in GNUPGHOME means no agent: the two gpgconf calls are skipped.
            if self.interrupted or agent_may_run(self.home):
                stop_agent(self.root)
        finally:
            for _ in range(5):  # the agent may still be removing its sockets
                try:
                    shutil.rmtree(self.root)
                    break
                except FileNotFoundError:
                    continue

    def _run(self, args: list[str], stdin: bytes = b"") -> GpgRun:
        status_path = os.path.join(self.root, "status")
        argv = ["gpg", "--homedir", self.home, *COMMON, "--status-file", status_path, *args]
        with tempfile.TemporaryFile(dir=self.root) as log:
            try:
                proc = subprocess.Popen(argv, shell=False, cwd=self.root, env=self.env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, preexec_fn=_preexec(),
                                        start_new_session=True)
            except FileNotFoundError as exc:
                raise (GPG.missing() if exc.filename in ("gpg", None) else exc) from None
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                kill_group(proc)
            timer = threading.Timer(max(self.deadline - time.monotonic(), 0.001), expire)
            timer.start()
            data, capped = bytearray(), False
            ended = False
            try:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    with proc.stdin:
                        proc.stdin.write(stdin)
                except (BrokenPipeError, OSError):
                    pass
                with proc.stdout:
                    while chunk := proc.stdout.read1(1 << 20):  # type: ignore[attr-defined]
                        data.extend(chunk)
                        if len(data) > self.max_output:
                            capped = True
                            break
                if not capped:
                    proc.wait()
                    ended = not expired.is_set()
            finally:
                self.interrupted |= not ended
                timer.cancel()
                kill_group(proc)
            log.seek(0)
            text = log.read(1 << 16).decode("utf-8", "replace")
        status = Status()
        if os.path.exists(status_path):
            with open(status_path, "rb") as stream:
                raw = stream.read(_STATUS_BYTES).decode("utf-8", "replace")
            os.unlink(status_path)
            for line in raw.splitlines():
                if line.startswith(PREFIX):
                    status.feed(line[len(PREFIX):])
        stopped = "limit:tool-time" if expired.is_set() else "limit:gpg-bytes" if capped else None
        return GpgRun(status, None if stopped else bytes(data), stopped, proc.returncode, text)

    def import_keys(self, path: str) -> int:
        """Imports a key file (public and/or secret keys) into the private GNUPGHOME; the keys read."""
        outcome = self._run(["--import", path])
        if outcome.stopped:
            raise TimeoutError("gpg --import did not finish in time")
        return outcome.status.imported

    def decrypt(self, content: bytes, passphrase: str) -> GpgRun:
        """Decrypts and/or verifies ``content`` (binary or ASCII-armored, or clear-signed text)."""
        path = os.path.join(self.root, "input")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        return self._run(["--passphrase-fd", "0", "--output", "-", "--decrypt", path], passphrase.encode() + b"\n")
