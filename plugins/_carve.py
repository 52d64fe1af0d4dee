"""Finding and sizing PE files embedded in other data: the logic behind the ``pe`` carver.

Every ``MZ`` is a candidate. A candidate whose ``e_lfanew`` does not lead to ``PE\\0\\0`` inside the data
is rejected with ``struct`` alone; the others are parsed by pefile from a slice holding just their
headers (``fast_load``), so a candidate costs a few KiB whatever the payload's size. A PE's size is the
end of its furthest section's raw data (at least ``SizeOfHeaders``), extended to the end of the
certificate table when that table follows the sections (its directory entry is a file offset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pefile

#: Largest ``e_lfanew`` believed; real ones are a few hundred bytes (pefile accepts up to the data size).
MAX_LFANEW = 1 << 20
IMAGE_FILE_DLL = 0x2000
SECURITY_DIRECTORY = 4


@dataclass(frozen=True, slots=True)
class Carved:
    """One PE found at ``offset``: ``size`` bytes (``truncated`` when the data or the cap cut it)."""

    offset: int
    size: int
    declared_size: int
    is_dll: bool
    machine: str

    @property
    def truncated(self) -> bool:
        return self.size < self.declared_size


def headers_span(data: bytes, offset: int) -> int | None:
    """Bytes from ``offset`` to the end of the section table, if ``e_lfanew`` leads to ``PE\\0\\0``."""
    if offset + 0x40 > len(data):
        return None
    lfanew = struct.unpack_from("<I", data, offset + 0x3C)[0]
    nt = offset + lfanew
    if lfanew < 0x40 or lfanew > MAX_LFANEW or nt + 24 > len(data) or data[nt:nt + 4] != b"PE\x00\x00":
        return None
    sections, optional_size = struct.unpack_from("<H12xH", data, nt + 6)
    return lfanew + 24 + optional_size + 40 * sections


def measure(data: bytes, offset: int, max_size: int) -> Carved | None:
    """The PE at ``offset``, sized from its headers and cut at the data's end and ``max_size``; None
    when the candidate is not a well-formed PE (no ``PE\\0\\0`` signature, or pefile refuses it)."""
    span = headers_span(data, offset)
    if span is None:
        return None
    try:  # from bytes pefile holds nothing open, so no close() (it would run a full gc.collect())
        pe = pefile.PE(data=data[offset:offset + span], fast_load=True)
    except (pefile.PEFormatError, struct.error):
        return None
    end = pe.OPTIONAL_HEADER.SizeOfHeaders
    for section in pe.sections:
        if section.SizeOfRawData:
            end = max(end, section.PointerToRawData + section.SizeOfRawData)
    directories = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(directories) > SECURITY_DIRECTORY:
        certificates = directories[SECURITY_DIRECTORY]
        if certificates.Size and certificates.VirtualAddress >= end:
            end = certificates.VirtualAddress + certificates.Size
    end = max(end, span)
    machine = pefile.MACHINE_TYPE.get(pe.FILE_HEADER.Machine)
    return Carved(offset=offset, size=min(end, len(data) - offset, max_size), declared_size=end,
                  is_dll=bool(pe.FILE_HEADER.Characteristics & IMAGE_FILE_DLL),
                  machine=machine if isinstance(machine, str) else hex(pe.FILE_HEADER.Machine))


def carve(data: bytes, max_candidates: int, max_size: int) -> tuple[list[Carved], int, int, bool]:
    """The PEs embedded in ``data``: (found, candidates examined, rejected, candidate cap reached).

    Candidates inside a PE already found are not examined (that PE's own scan finds them); the PE
    making up the whole of ``data`` is not returned, but what it contains is still searched.
    """
    found: list[Carved] = []
    examined = rejected = 0
    at = data.find(b"MZ")
    while at >= 0:
        if examined >= max_candidates:
            return found, examined, rejected, True
        examined += 1
        carved = measure(data, at, max_size)
        if carved is None:
            rejected += 1
            at = data.find(b"MZ", at + 1)
        elif at == 0 and carved.size == len(data):  # the payload itself
            at = data.find(b"MZ", at + 1)
        else:
            found.append(carved)
            at = data.find(b"MZ", at + max(carved.size, 1))
    return found, examined, rejected, False
