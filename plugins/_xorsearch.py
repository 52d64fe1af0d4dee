"""Strings and PE headers hidden under single-byte XOR, ROL and ADD keys, found without a Python loop over
bytes (plain code, no plugin API).

XOR and ADD are searched once for every key: ``x[i] ^ x[i+1]`` (and ``x[i+1] - x[i]``) is the same
whether the bytes were encoded with one key or another, so the pattern's own differences are looked for
in the payload's differences (one C-speed ``bytes.find`` scan), and each hit's key is read off its
first byte. ROL has 7 keys: the pattern rotated each way is searched directly. ``MZ`` candidates are
checked all at once with numpy: their ``e_lfanew``, decoded with each candidate's key, must lead to
``PE\\0\\0`` decoded with that key.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import numpy.typing as npt

METHODS = ("xor", "rol", "add")
#: Largest ``e_lfanew`` accepted (the PE header's offset from ``MZ``).
MAX_LFANEW = 0x10000
#: Bytes searched for ``MZ`` candidates at a time.
WINDOW = 4 * 1024 * 1024

U8 = npt.NDArray[np.uint8]


def array(content: bytes) -> U8:
    """``content`` as an array of bytes, without a copy."""
    return np.frombuffer(content, dtype=np.uint8)


class Hit(NamedTuple):
    """A pattern found at ``offset``, encoded with ``method`` and ``key`` (``key`` bits for ROL)."""

    method: str
    key: int
    offset: int
    pattern: bytes


def encode(values: U8, method: str, key: int | U8) -> U8:
    """``values`` as encoded with ``method`` and ``key`` (ROL: rotated left by ``key`` bits)."""
    if method == "xor":
        return values ^ np.uint8(key) if isinstance(key, int) else values ^ key
    if method == "add":
        return values + np.uint8(key) if isinstance(key, int) else values + key
    r = int(key)
    return (values << np.uint8(r)) | (values >> np.uint8(8 - r))


def decode(values: U8, method: str, key: int | U8) -> U8:
    """The inverse of ``encode``."""
    if method == "xor":
        return encode(values, "xor", key)
    if method == "add":
        return values - np.uint8(key) if isinstance(key, int) else values - key
    return encode(values, "rol", 8 - int(key))


def differences(data: U8, method: str) -> U8:
    """Key-independent differences of consecutive bytes: XOR for ``xor``, subtraction for ``add``."""
    return data[1:] ^ data[:-1] if method == "xor" else data[1:] - data[:-1]


def find_strings(data: U8, patterns: list[bytes], plain: bool) -> Iterator[Hit]:
    """Every occurrence of each pattern (2 bytes or more) under each key; key 0 (no encoding, reported as
    ``xor``) only if ``plain``. Hits come method by method (xor, add, rol) and pattern by pattern, in
    offset order within each."""
    raw = data.tobytes()
    for method in ("xor", "add"):
        diffs = differences(data, method).tobytes()
        for pattern in patterns:
            p = np.frombuffer(pattern, dtype=np.uint8)
            for i in _occurrences(diffs, differences(p, method).tobytes()):
                key = (raw[i] ^ pattern[0]) if method == "xor" else (raw[i] - pattern[0]) % 256
                if key or (plain and method == "xor"):  # key 0 is the same plain text under both
                    yield Hit(method, key, i, pattern)
    for pattern in patterns:
        p = np.frombuffer(pattern, dtype=np.uint8)
        for bits in range(1, 8):
            for i in _occurrences(raw, encode(p, "rol", bits).tobytes()):
                yield Hit("rol", bits, i, pattern)


def _occurrences(haystack: bytes, needle: bytes) -> Iterator[int]:
    """Every offset of ``needle`` in ``haystack``, overlapping ones included (``bytes.find``: C speed)."""
    at = haystack.find(needle)
    while at >= 0:
        yield at
        at = haystack.find(needle, at + 1)


def find_executables(data: U8, plain: bool, limit: int) -> list[Hit]:
    """``MZ`` whose ``e_lfanew`` leads to ``PE\\0\\0``, under each method and key: the first ``limit`` + 1
    in offset order (one more than the caller reports, to tell that there were more). Candidates are
    taken a window at a time, so that hostile data made of ``MZ`` pairs costs no more memory than any."""
    mz = np.frombuffer(b"MZ", dtype=np.uint8)
    found: list[Hit] = []
    if len(data) < 0x40 + 4:  # no room for a DOS header and its PE signature
        return found
    raw = data.tobytes()
    for method in METHODS:
        for bits in (range(1, 8) if method == "rol" else (None,)):
            kept: list[Hit] = []
            rol_mz = encode(mz, "rol", bits).tobytes() if bits is not None else b""
            for first in range(0, max(len(data) - 1, 0), WINDOW):
                if bits is not None and raw.find(rol_mz, first, first + WINDOW + 1) < 0:
                    continue  # no candidate in this window: bytes.find is cheaper than numpy's passes
                window = data[first:first + WINDOW + 1]
                if bits is None:  # all keys at once: the difference of M and Z, then each start's key
                    starts = np.flatnonzero(differences(window, method) == differences(mz, method)[0])
                    keys = window[starts] ^ mz[0] if method == "xor" else window[starts] - mz[0]
                    if method == "add" or not plain:  # key 0: plain, reported once (as xor)
                        starts, keys = starts[keys != 0], keys[keys != 0]
                else:
                    e = encode(mz, "rol", bits)
                    starts = np.flatnonzero((window[:-1] == e[0]) & (window[1:] == e[1]))
                    keys = np.full(len(starts), bits, dtype=np.uint8)
                kept.extend(_verified(data, method, starts + first, keys, bits))
                if len(kept) > limit:
                    break
            found.extend(kept[:limit + 1])
    return sorted(found, key=lambda h: (h.offset, METHODS.index(h.method), h.key))[:limit + 1]


def _verified(data: U8, method: str, starts: npt.NDArray[np.intp], keys: U8, bits: int | None) -> list[Hit]:
    """The candidates among ``starts`` whose decoded ``e_lfanew`` leads to a decoded ``PE\\0\\0``
    (``keys``: each candidate's key; ``bits``: ROL's, the same for all)."""
    n = len(data)
    if not len(starts):
        return []
    fits = starts + 0x40 <= n
    starts, keys = starts[fits], keys[fits]
    lfanew = np.zeros(len(starts), dtype=np.int64)
    for j in range(4):
        byte = decode(data[starts + 0x3C + j], method, keys if bits is None else bits)
        lfanew |= byte.astype(np.int64) << (8 * j)
    fits = (lfanew < MAX_LFANEW) & (starts + lfanew + 4 <= n)
    starts, keys, lfanew = starts[fits], keys[fits], lfanew[fits]
    ok = np.ones(len(starts), dtype=bool)
    for j, want in enumerate(b"PE\0\0"):
        ok &= decode(data[starts + lfanew + j], method, keys if bits is None else bits) == want
    return [Hit(method, int(k), int(s), b"MZ") for s, k in zip(starts[ok], keys[ok])]


def decoded_from(data: U8, offset: int, method: str, key: int) -> bytes:
    """The payload from ``offset`` on, decoded with ``method`` and ``key``."""
    return decode(data[offset:], method, key).tobytes()
