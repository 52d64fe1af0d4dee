"""Shannon entropy of a buffer and of its blocks, counted with numpy (plain code, no plugin API)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Bytes counted per numpy pass: bounds the temporary arrays (16 bytes per byte) to 64 MiB.
CHUNK = 4 * 1024 * 1024


def block_counts(data: bytes, block: int) -> npt.NDArray[np.int64]:
    """Byte counts of each ``block``-byte block of ``data``, one row of 256 per block; a shorter last
    block has its own row. One ``bincount`` per chunk: each byte's value is offset by 256 x its row."""
    rows = -(-len(data) // block)
    counts = np.zeros((rows, 256), dtype=np.int64)
    per_chunk = max(1, CHUNK // block)
    view = np.frombuffer(data, dtype=np.uint8)
    for first in range(0, rows, per_chunk):
        part = view[first * block:(first + per_chunk) * block]
        n = -(-len(part) // block)
        index = part.astype(np.intp)
        index += np.repeat(np.arange(n, dtype=np.intp) * 256, block)[:len(part)]
        counts[first:first + n] = np.bincount(index, minlength=n * 256).reshape(n, 256)
    return counts


def shannon(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Entropy in bits per byte (0.0 to 8.0) of each row of byte counts (of a single row: a 0-d array)."""
    totals = counts.sum(axis=-1, keepdims=True)
    p = counts / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0)
    return np.asarray(0.0 - terms.sum(axis=-1))
