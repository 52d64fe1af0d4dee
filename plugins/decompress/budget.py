"""The byte budget of one extraction, shared by every reader of ``decompress``: the caps (``Caps``), the
bomb rule, and the members and flags collected under them (``Unpacker``).

Every reader is drained in chunks and the bytes it gives are counted against the caps: no size declared
by the input is trusted. Nothing is written to disk; member names are metadata only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from stoq.model import iso

#: Most bytes asked of a reader at once.
CHUNK = 1 << 20
#: Most compressed bytes given to a decompressor at once (a zip member's, an xz or lzma stream's; zstd's
#: is smaller, ``ZstdReader.FEED``): small, because what it holds unread counts as consumed for the bomb rule.
FEED = 1 << 14

#: Default of the decoder memory an xz or lzma stream may ask for (``xz -9`` needs 65 MiB).
LZMA_MEMORY = 128 << 20
#: Default address-space limit of an external extractor (``RLIMIT_AS``).
TOOL_MEMORY = 1 << 30
#: Defaults of the bomb rule: a member is abandoned once, past ``BOMB_AFTER`` decompressed bytes, it has
#: given more than ``BOMB_RATIO`` times the compressed bytes read for it (deflate tops out at 1032:1).
BOMB_RATIO = 1000.0
BOMB_AFTER = 8 << 20


@dataclass(frozen=True, slots=True)
class Caps:
    """The caps of one extraction (the ``decompress`` options)."""

    max_member_bytes: int
    max_total_bytes: int
    max_members: int
    ratio_flag: float
    passwords: tuple[bytes, ...] = ()
    lzma_memory: int = LZMA_MEMORY  # most decoder memory an xz or LZMA stream may ask for
    tool_memory: int = TOOL_MEMORY  # RLIMIT_AS of an external tool
    bomb_ratio: float = BOMB_RATIO  # 0: no bomb rule
    bomb_after: int = BOMB_AFTER

    def bomb(self, produced: int, consumed: int | None) -> bool:
        """True if ``produced`` decompressed bytes from ``consumed`` compressed ones is a ratio no real
        file has (the bomb rule; never below ``bomb_after`` bytes, never when ``consumed`` is unknown)."""
        return (consumed is not None and self.bomb_ratio > 0 and produced > self.bomb_after
                and produced > self.bomb_ratio * max(consumed, 1))


@dataclass(slots=True)
class Member:
    """One extracted member: its bytes and what the container says of it."""

    name: str | None
    content: bytes
    compressed_size: int | None
    modified: str | None = None
    encrypted: bool = False
    crc: int | None = None


@dataclass(slots=True)
class Unpacker:
    """Collects the members and flags of one container while keeping its byte budget."""

    caps: Caps
    members: list[Member] = field(default_factory=list)
    flags: dict[str, None] = field(default_factory=dict)  # an ordered set
    listed: int = 0  # regular-file members seen in the container
    total: int = 0  # bytes decompressed so far, kept or not
    stopped: bool = False  # the total cap was reached: extract nothing more
    unread: int = 0  # bytes an external tool wrote that were never read (dropped at a cap)

    @property
    def extracted(self) -> int:
        """Every byte decompressed, kept or not: what the scan's byte budget is charged."""
        return self.total + self.unread

    def flag(self, name: str) -> None:
        self.flags[name] = None

    def admit(self) -> bool:
        """Counts one more member; False (with a flag) past ``max_members`` or the total cap."""
        if self.stopped:
            return False
        if self.listed >= self.caps.max_members:
            self.flag("limit:members")
            return False
        self.listed += 1
        return True

    def drain(self, read: Callable[[int], bytes], sink: bytearray, compressed_size: int | None,
              consumed: Callable[[], int] | None = None) -> bool:
        """Appends ``read(CHUNK)`` to ``sink`` until it gives nothing. False, with a flag, at a cap or
        when the member is a bomb: ``consumed()`` says how many compressed bytes the reader has used so
        far (without it, the whole ``compressed_size`` is the measure, which only a finished member reaches).

        On an exception from ``read``, ``sink`` keeps what was read before it.
        """
        caps = self.caps
        try:
            # near the total cap, no more than it allows (+1, to see it passed): the scan's budget may be small
            while chunk := read(min(CHUNK, caps.max_total_bytes - self.total + 1)):
                sink += chunk
                self.total += len(chunk)
                if self.total > caps.max_total_bytes:  # first: it stops the whole payload
                    self.flag("limit:total-bytes")
                    self.stopped = True
                    return False
                if len(sink) > caps.max_member_bytes:
                    self.flag("limit:member-bytes")
                    return False
                if caps.bomb(len(sink), consumed() if consumed is not None else compressed_size):
                    self.flag("ratio:bomb")
                    return False
            return True
        finally:
            if compressed_size is not None and len(sink) > caps.ratio_flag * max(compressed_size, 1):
                self.flag("ratio:high")


def timestamp(seconds: float | None) -> str | None:
    """ISO-8601 UTC of a Unix time, or None when absent or out of range."""
    if not seconds:
        return None
    try:
        return iso(datetime.fromtimestamp(seconds, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None
