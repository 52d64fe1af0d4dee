"""Extraction by external tools, for the formats no stdlib module reads. One tool per format:

- ``7z`` (p7zip-full): 7z, cab, iso9660/udf, vhd and Apple (UDIF, .dmg) disk images (the files of the filesystem inside, when 7z
  reads it; else the disk image) and zip with WinZip AES members; names from ``7z l -slt``.
- ``unar``/``lsar`` (unar): rar (RAR 1.5 to 5; the non-free unrar is not used) and lzh/lha; names from
  ``lsar -j``.
- ``bsdtar`` (libarchive-tools): cpio, rpm and xar (ar too, where ``decompress`` does not read it itself),
  converted to a pax stream on stdout
  (``bsdtar -cf - @archive``) and read by ``unpack_tar``: nothing is extracted to disk.
- ``bsdcat`` (libarchive-tools): lzip and zstd streams, read from its stdout.

Input is hostile. Each tool runs without a shell on a copy of the payload in a private scratch
directory (``stoq_plugins._scratch``: mode 0700, its cwd and HOME; one left by a killed worker is removed
by the next worker's ``setup``), in a new session, with stdin closed, a
time limit (flag ``limit:tool-time``), no core dumps, ``RLIMIT_AS`` at ``tool_memory`` (a tool that
cannot allocate what a crafted header asks for fails: flag ``limit:tool-memory``) and ``RLIMIT_FSIZE``
at ``max_member_bytes + 1`` (``SIGXFSZ`` ignored: the write fails instead). While a tool extracts, the output directory is watched
and the tool killed once it holds more than ``max_members`` files or ``max_total_bytes`` bytes, or more
than ``bomb_ratio`` times the input past ``bomb_after`` (``ratio:bomb``); its exit is noticed at once
(``stoq_plugins._process.wait_tool``: a pidfd, not a polling sleep).
Afterwards the output is walked without following links: only regular files (``os.lstat``), each inode
once, read with ``O_NOFOLLOW``; then the same caps and flags as the in-process formats apply. A file
whose size differs from the listed one (a member the tool failed on) is flagged ``corrupt:member`` and
dropped. Member names are metadata: a file is matched to its listing entry by its path with empty,
``.`` and ``..`` parts removed, and keeps the archive's name. The scratch directory is always removed.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Callable

from stoq import lifetime
from stoq.model import iso
from stoq.plugin import Tool, tool_path
from stoq_plugins._process import kill_group, wait_tool
from stoq_plugins._scratch import make as make_scratch
from stoq_plugins._scratch import rmtree
from stoq_plugins.decompress.budget import Member, Unpacker
from stoq_plugins.decompress.formats import declared_size
from stoq_plugins.decompress.streams import stream_name
from stoq_plugins.decompress.tar import unpack_tar

INPUT, OUT = "input", "out"
#: The programs run here, by command, with the Debian package of each (``decompress`` declares them).
TOOLS = {t.command: t for t in (Tool("7z", "p7zip-full", ()), Tool("unar", "unar"), Tool("lsar", "unar"),
                                Tool("bsdtar", "libarchive-tools"), Tool("bsdcat", "libarchive-tools"))}
#: Leading bytes each tool-read stream must have (bsdcat would copy anything else unchanged).
STREAM_MAGIC = {"lzip": b"LZIP", "zstd": b"\x28\xb5\x2f\xfd"}
#: util-linux's prlimit, which sets a tool's rlimits without a preexec_fn (None: set them in preexec_fn).
PRLIMIT = shutil.which("prlimit", path="/usr/bin:/bin") if signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN else None
#: util-linux's setpriv, which asks for SIGKILL at the worker's death (PR_SET_PDEATHSIG) where no
#: preexec_fn runs: a killed worker (the scan stopped) takes its tool along.
SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
#: No password tried when the list is empty: 7z would otherwise prompt for one.
NO_PASSWORD = "stoq-no-password"
_LOG_BYTES = 1 << 16
#: What the tools say of input that ends too soon (liblzma's "no progress" is a cut lzip stream).
TRUNCATION = ("unexpected end", "truncated", "no progress is possible")
#: What the tools say when an allocation fails under ``RLIMIT_AS`` (liblzma, 7-Zip, C++ runtimes).
OUT_OF_MEMORY = ("cannot allocate memory", "can't allocate", "can not allocate", "out of memory", "bad_alloc",
                 "not enough memory")


def out_of_memory(code: int, log: str) -> bool:
    """True if a tool that failed says an allocation failed."""
    text = log.lower()
    return code != 0 and any(m in text for m in OUT_OF_MEMORY)


class ToolError(ValueError):
    """The tool could read nothing of the input."""


@dataclass(slots=True)
class Entry:
    """One listed member."""

    name: str
    size: int | None
    packed: int | None
    modified: str | None
    encrypted: bool


@dataclass(slots=True)
class Run:
    """How one tool run ended: exit status, the start of its messages, the cap that stopped it."""

    code: int
    log: str
    stopped: str | None = None


def ended(proc: subprocess.Popen, log: IO[bytes], stopped: str | None) -> Run:
    """The ``Run`` of a finished tool: the start of its messages (``log``, read from the start) and
    the cap that stopped it, ``limit:tool-memory`` when it failed to allocate and nothing else did."""
    log.seek(0)
    text = log.read(_LOG_BYTES).decode("utf-8", "replace")
    if stopped is None and out_of_memory(proc.returncode, text):
        stopped = "limit:tool-memory"
    return Run(proc.returncode, text, stopped)


def key(name: str) -> str:
    """A member name as extractors sanitize it: separators unified, empty, ``.`` and ``..`` parts gone."""
    return "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".", ".."))


def _modified(text: str | None) -> str | None:
    try:
        return iso(datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)) if text else None
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


class Scratch:
    """A private directory holding a copy of the payload; removed on exit, whatever happened."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> Scratch:
        self.root = make_scratch("tool")  # mode 0700
        try:
            fd = os.open(os.path.join(self.root, INPUT), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(self.data)
            self.out = os.path.join(self.root, OUT)
            os.mkdir(self.out, 0o700)
        except BaseException:
            rmtree(self.root)
            raise
        return self

    def reset(self) -> None:
        """An empty output directory (after a wrong password)."""
        rmtree(self.out)
        os.mkdir(self.out, 0o700)

    def __exit__(self, *exc: object) -> None:
        rmtree(self.root)


class Tools:
    """Runs the tools for one payload under the caps of ``unpacker`` and a time limit in seconds."""

    def __init__(self, unpacker: Unpacker, timeout: float) -> None:
        self.unpacker, self.timeout = unpacker, timeout
        self.caps = unpacker.caps
        self.cut = False  # a tool was killed: files may be partial

    def _env(self, scratch: Scratch) -> dict[str, str]:
        return {"PATH": tool_path(), "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": scratch.root}

    def _rlimits(self) -> list[tuple[int, int]]:
        """The tool's rlimits: each cap, lowered to this process's hard limit (which cannot be raised)."""
        rlimits = []
        for which, size in ((resource.RLIMIT_FSIZE, self.caps.max_member_bytes + 1),
                            (resource.RLIMIT_AS, self.caps.tool_memory), (resource.RLIMIT_CORE, 0)):
            hard = resource.getrlimit(which)[1]
            rlimits.append((which, size if hard == resource.RLIM_INFINITY else min(size, hard)))
        return rlimits

    def _preexec(self) -> Callable[[], None]:
        rlimits = self._rlimits()
        die_with_worker = lifetime.preexec()  # a killed worker (the scan stopped) takes its tool along

        def limit() -> None:
            die_with_worker()
            for which, cap in rlimits:
                resource.setrlimit(which, (cap, cap))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        return limit

    def _popen(self, argv: list[str], scratch: Scratch, log: IO[bytes], stdout: int | IO[bytes]) -> subprocess.Popen:
        try:
            return self._spawn(argv, scratch, log, stdout)
        except FileNotFoundError as exc:
            raise missing(argv[0], exc) from None

    def _spawn(self, argv: list[str], scratch: Scratch, log: IO[bytes], stdout: int | IO[bytes]) -> subprocess.Popen:
        env = self._env(scratch)
        if PRLIMIT is None:  # the rlimits set between fork and exec: a fork of this whole process
            return subprocess.Popen(argv, shell=False, cwd=scratch.root, env=env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=log, preexec_fn=self._preexec(), start_new_session=True)
        # Without preexec_fn, subprocess starts the child with vfork (not a copy of this process's page
        # tables); prlimit(1) sets the caps on itself and execs the tool in the same process. SIGXFSZ
        # stays ignored, as Python set it (restore_signals=False), so a write past the cap fails instead.
        if shutil.which(argv[0], path=env["PATH"]) is None:  # as Popen says it without prlimit in between
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        rlimits = dict(self._rlimits())
        wrapped = [PRLIMIT, f"--fsize={rlimits[resource.RLIMIT_FSIZE]}", f"--as={rlimits[resource.RLIMIT_AS]}",
                   f"--core={rlimits[resource.RLIMIT_CORE]}", "--",
                   *((SETPRIV, "--pdeathsig", "KILL", "--") if SETPRIV else ()), *argv]
        return subprocess.Popen(wrapped, shell=False, cwd=scratch.root, env=env, stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=log, start_new_session=True, restore_signals=False)

    def listing(self, argv: list[str], scratch: Scratch) -> subprocess.CompletedProcess[bytes]:
        """A listing command (its output, to files in the scratch directory, is read whole: it has no
        extracted data)."""
        with tempfile.TemporaryFile(dir=scratch.root) as out, tempfile.TemporaryFile(dir=scratch.root) as err:
            proc = self._popen(argv, scratch, err, out)
            try:
                stopped = wait_tool(proc, self.timeout)
            finally:
                kill_group(proc)
            if stopped:
                self.unpacker.flag(stopped)
                return subprocess.CompletedProcess(argv, -1, b"", b"")
            out.seek(0)
            err.seek(0)
            done = subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())
        if out_of_memory(done.returncode, done.stderr[:_LOG_BYTES].decode("utf-8", "replace")):
            self.unpacker.flag("limit:tool-memory")
        return done

    def extract(self, argv: list[str], scratch: Scratch) -> Run:
        """Runs an extracting tool, killing it at the time limit or when its output passes a cap."""
        with tempfile.TemporaryFile(dir=scratch.root) as log:
            proc = self._popen(argv, scratch, log, log)
            stopped = None
            try:
                stopped = wait_tool(proc, self.timeout, lambda: self._over(scratch.out, len(scratch.data)))
                self.cut = stopped is not None
            finally:  # also when the plugin's own time limit interrupts the wait
                kill_group(proc)
            return ended(proc, log, stopped)

    def _over(self, out: str, compressed: int) -> str | None:
        """The cap a running tool's output directory has passed (members, total bytes, the bomb rule
        against the ``compressed`` size of the whole input), or None."""
        count = total = 0
        for root, _, names in os.walk(out, followlinks=False):
            for name in names:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                count, total = count + 1, total + st.st_size
                if count > self.caps.max_members:
                    return "limit:members"
                if total > self.caps.max_total_bytes:
                    return "limit:total-bytes"
        return "ratio:bomb" if self.caps.bomb(total, compressed) else None

    def pipe(self, argv: list[str], scratch: Scratch, consume: Callable[[IO[bytes]], None]) -> Run:
        """Runs a tool writing to stdout, read by ``consume``; killed at the time limit or when it returns."""
        with tempfile.TemporaryFile(dir=scratch.root) as log:
            proc = self._popen(argv, scratch, log, subprocess.PIPE)
            expired = threading.Event()

            def expire() -> None:
                expired.set()
                kill_group(proc)
            timer = threading.Timer(self.timeout, expire)
            timer.start()
            try:
                assert proc.stdout is not None
                with proc.stdout:
                    consume(proc.stdout)
                proc.wait()  # still under the timer; a tool whose output was cut short gets EPIPE
            finally:
                timer.cancel()
                kill_group(proc)
            return ended(proc, log, "limit:tool-time" if expired.is_set() else None)

    def collect(self, scratch: Scratch, entries: list[Entry], compressed: int) -> None:
        """Admits the regular files of the output directory, in listing order, as members."""
        by_key: dict[str, list[Entry]] = {}
        order = {id(e): i for i, e in enumerate(entries)}
        for entry in entries:
            by_key.setdefault(key(entry.name), []).append(entry)
        found: list[tuple[int, str, str, Entry | None]] = []
        seen: set[tuple[int, int]] = set()
        for root, dirs, names in os.walk(scratch.out, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                rel = os.path.relpath(path, scratch.out)
                matches = by_key.get(key(rel))
                match: Entry | None = matches.pop(0) if matches else None
                found.append((order[id(match)] if match else len(entries), rel, path, match))
        written, before = sum(os.lstat(f[2]).st_size for f in found), self.unpacker.total
        try:
            for _, rel, path, listed in sorted(found, key=lambda f: (f[0], f[1])):
                if not self.unpacker.admit():
                    return
                self._read(path, rel, listed, compressed)
        finally:  # what the tool wrote and was not read (dropped at a cap) was decompressed all the same
            self.unpacker.unread += max(0, written - (self.unpacker.total - before))

    def _read(self, path: str, rel: str, entry: Entry | None, compressed: int) -> None:
        size = os.lstat(path).st_size
        if size > self.caps.max_member_bytes:  # (RLIMIT_FSIZE stopped the tool there)
            self.unpacker.flag("limit:member-bytes")
            return
        if self.unpacker.total + size > self.caps.max_total_bytes:
            self.unpacker.flag("limit:total-bytes")
            self.unpacker.stopped = True
            return
        if entry is not None and entry.size is not None and entry.size != size:
            if not self.cut:
                self.unpacker.flag("corrupt:member")
            return
        if self.cut and (entry is None or entry.size is None):
            return  # a killed tool's file whose size no listing vouches for may be partial: not a member
        sink = bytearray()
        packed = entry.packed if entry is not None and entry.packed else compressed
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as stream:
            if not self.unpacker.drain(stream.read, sink, packed):
                return
        self.unpacker.members.append(Member(entry.name if entry else rel, bytes(sink), entry.packed if entry else None,
                                            entry.modified if entry else None, entry.encrypted if entry else False))


def missing(command: str, exc: FileNotFoundError) -> Exception:
    """``ToolMissing`` when the program itself was not found (not, say, the scratch directory)."""
    tool = TOOLS.get(command)
    return tool.missing() if tool is not None and exc.filename in (command, None) else exc


# --- per tool -------------------------------------------------------------------------------------------

def _flag_run(tools: Tools, run: Run, recovered: bool, data: bytes = b"") -> None:
    """Flags a failed run (corrupt:truncated or corrupt:data) or the cap that stopped it; raises ToolError
    when the tool failed and read nothing of an input that is not a cut 7z or cab."""
    if run.stopped:
        tools.unpacker.flag(run.stopped)
        return
    text = run.log.lower()
    if (run.code == 0 and "error" not in text) or "limit:member-bytes" in tools.unpacker.flags:
        return  # (a tool fails on the file that reached RLIMIT_FSIZE)
    size = declared_size(data)
    cut = size is not None and size > len(data)
    if not recovered and not cut:
        raise ToolError(f"{run.log.strip()[-300:]} (exit status {run.code})")
    tools.unpacker.flag("corrupt:truncated" if cut or any(m in text for m in TRUNCATION)
                        else "corrupt:data")


def list_7z(text: str) -> list[Entry]:
    entries = []
    for block in text.split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        attributes = fields.get("Attributes", "").split(" ")[0]
        if "Path" not in fields or "D" in attributes.split("_")[0] or fields.get("Folder") == "+":
            continue
        entries.append(Entry(fields["Path"], _int(fields.get("Size")), _int(fields.get("Packed Size")),
                             _modified(fields.get("Modified")), fields.get("Encrypted") == "+"))
    return entries


def unpack_7z(tools: Tools, scratch: Scratch) -> None:
    """7z, cab, iso/udf, vhd, AES zip: each password in turn while 7z says it is the wrong one."""
    passwords = list(tools.caps.passwords) or [NO_PASSWORD.encode()]
    for password in passwords:
        secret = "-p" + password.decode("utf-8", "replace")
        run = tools.extract(["7z", "x", "-y", "-bd", "-bso0", "-bsp0", secret, "-o" + OUT, INPUT], scratch)
        if "wrong password" not in run.log.lower():
            break
        scratch.reset()
    else:
        tools.unpacker.flag("password:none-worked")
        return
    listing = tools.listing(["7z", "l", "-slt", "-ba", secret, INPUT], scratch)
    entries = list_7z(listing.stdout.decode("utf-8", "replace"))
    tools.collect(scratch, entries, len(scratch.data))
    _flag_run(tools, run, bool(entries) or bool(tools.unpacker.members), scratch.data)


def unpack_rar(tools: Tools, scratch: Scratch) -> None:
    """rar and lzh via unar; passwords are tried when lsar lists an encrypted member (or cannot list)."""
    listing = tools.listing(["lsar", "-j", INPUT], scratch)
    try:
        contents = json.loads(listing.stdout).get("lsarContents", [])
    except (ValueError, AttributeError):
        contents = []
    entries = [Entry(str(c.get("XADFileName", "")), _int(c.get("XADFileSize")), _int(c.get("XADCompressedSize")),
                     _modified(c.get("XADLastModificationDate")), bool(c.get("XADIsEncrypted")))
               for c in contents if isinstance(c, dict) and not c.get("XADIsDirectory") and not c.get("XADIsLink")]
    encrypted = listing.returncode != 0 or any(e.encrypted for e in entries)
    attempts: list[bytes | None] = list(tools.caps.passwords) if encrypted else [None]
    for password in attempts:
        secret = [] if password is None else ["-p", password.decode("utf-8", "replace")]
        run = tools.extract(["unar", "-q", "-f", "-D", "-nr", "-o", OUT, *secret, INPUT], scratch)
        if "password" not in run.log.lower() or run.code == 0:
            break
        scratch.reset()
    else:
        tools.unpacker.flag("password:none-worked")
        return
    tools.collect(scratch, entries, len(scratch.data))
    _flag_run(tools, run, bool(entries) or bool(tools.unpacker.members))


def unpack_libarchive(tools: Tools, scratch: Scratch) -> None:
    """cpio, ar, rpm, xar: bsdtar rewrites the archive as a pax stream, read in process (names untouched)."""
    caps = tools.caps
    cap = caps.max_total_bytes + (caps.max_members + 1) * 4096 + (1 << 20)
    data = bytearray()
    capped: str | None = None

    def consume(stdout: IO[bytes]) -> None:
        nonlocal capped
        while chunk := stdout.read1(1 << 20):  # type: ignore[attr-defined]
            data.extend(chunk)
            if len(data) > cap:
                capped = "limit:total-bytes"
            elif caps.bomb(len(data), len(scratch.data)):
                capped = "ratio:bomb"
            if capped:
                return
    run = tools.pipe(["bsdtar", "-cf", "-", "--format", "pax", "@" + INPUT], scratch, consume)
    cut = capped is not None or run.stopped is not None
    if run.stopped:
        tools.unpacker.flag(run.stopped)
    if capped:
        tools.unpacker.flag(capped)
    if data:
        before = set(tools.unpacker.flags)
        try:
            unpack_tar(bytes(data), tools.unpacker)
        except tarfile.ReadError:
            if not cut:
                raise
        if cut:  # the stream was cut by us, not damaged
            for name in set(tools.unpacker.flags) - before:
                if name.startswith("corrupt:"):
                    del tools.unpacker.flags[name]
    if not cut:
        _flag_run(tools, run, tools.unpacker.listed > 0)


def unpack_piped_stream(fmt: str, tools: Tools, scratch: Scratch, name: str | None) -> None:
    """One lzip or zstd stream (concatenated members or frames are read on) -> one member."""
    if not scratch.data.startswith(STREAM_MAGIC[fmt]):
        raise ToolError(f"not a {fmt} stream")
    if not tools.unpacker.admit():
        return
    sink = bytearray()
    complete = True

    def consume(stdout: IO[bytes]) -> None:
        nonlocal complete
        complete = tools.unpacker.drain(stdout.read1, sink, len(scratch.data))  # type: ignore[attr-defined]
    run = tools.pipe(["bsdcat", INPUT], scratch, consume)
    if complete:
        _flag_run(tools, run, bool(sink))
        if sink or not run.stopped:
            tools.unpacker.members.append(Member(stream_name(name), bytes(sink), len(scratch.data)))


#: The formats read here, by the tool that reads them.
TOOL_FORMATS = {"7z": "7z", "cab": "7z", "iso": "7z", "udf": "7z", "vhd": "7z", "dmg": "7z", "rar": "unar", "lzh": "unar",
                "cpio": "bsdtar",
                "ar": "bsdtar", "rpm": "bsdtar", "xar": "bsdtar", "lzip": "bsdcat", "zstd": "bsdcat"}


def unpack_tool(fmt: str, data: bytes, name: str | None, unpacker: Unpacker, timeout: float) -> None:
    """Extracts ``data`` of format ``fmt`` (a TOOL_FORMATS key, or ``zip`` for 7z) into ``unpacker``."""
    tools = Tools(unpacker, timeout)
    with Scratch(data) as scratch:
        tool = "7z" if fmt == "zip" else TOOL_FORMATS[fmt]
        if tool == "7z":
            unpack_7z(tools, scratch)
        elif tool == "unar":
            unpack_rar(tools, scratch)
        elif tool == "bsdtar":
            unpack_libarchive(tools, scratch)
        else:
            unpack_piped_stream(fmt, tools, scratch, name)
