"""ACE archives (1.0 and 2.0: stored, LZ77 and blocked members, Blowfish encryption) read in process by
acefile (pure Python, BSD-2-Clause), for ``decompress``: unar 1.10's ACE client lists no member of valid
archives, and the non-free unace is not used. Members are read block by block under the caps of the
``Unpacker``; each password is tried on an encrypted member (acefile cannot tell a wrong password from a
damaged member: both fail the CRC)."""

from __future__ import annotations

import io
from datetime import timezone
from typing import Any, Callable

from stoq.model import iso
from stoq_plugins.decompress.budget import Member, Unpacker


def _reader(blocks: Any) -> Callable[[int], bytes]:
    """A ``read(n)`` over acefile's generator of decompressed blocks (the caps count them as they come)."""
    return lambda _size: next(blocks, b"")


def unpack_ace(data: bytes, unpacker: Unpacker) -> None:
    """The regular-file members of an ACE archive; an archive acefile cannot open at all raises ValueError."""
    import acefile  # imported on first use

    try:
        archive = acefile.open(io.BytesIO(data), search=0)
    except acefile.AceError as exc:
        raise ValueError(f"not a readable ACE archive: {type(exc).__name__}: {exc}") from exc
    with archive:
        for member in archive:
            if not member.is_reg():
                continue
            if not unpacker.admit():
                return
            attempts: list[bytes | None] = list(unpacker.caps.passwords) if member.is_enc() else [None]
            for password in attempts:
                sink = bytearray()
                try:
                    pwd = None if password is None else password.decode("utf-8", "replace")
                    if not unpacker.drain(_reader(archive.readblocks(member, pwd=pwd)), sink, member.packsize):
                        break  # a cap: flagged by the unpacker
                except acefile.EncryptedArchiveError:
                    continue  # a wrong password, or damage inside an encrypted member
                except acefile.AceError:
                    unpacker.flag("corrupt:member")
                    break
                modified = member.datetime.replace(tzinfo=timezone.utc) if member.datetime else None
                crc = member.crc32 ^ 0xFFFFFFFF  # (ACE keeps the CRC-32 register uninverted)
                unpacker.members.append(Member(member.filename, bytes(sink), member.packsize,
                                               iso(modified) if modified else None, member.is_enc(), crc))
                break
            else:
                unpacker.flag("password:none-worked")
