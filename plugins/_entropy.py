"""Shannon entropy of a buffer and of its blocks, counted with numpy (plain code, no plugin API)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Bytes counted per numpy pass, and blocks per pass: together they bound the temporary arrays (about
#: 16 bytes per byte, 8 KiB per block) to about 100 MiB whatever the payload's size.
CHUNK = 4 * 1024 * 1024
ROWS = 4096


def shannon(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Entropy in bits per byte (0.0 to 8.0) of each row of byte counts (of a single row: a 0-d array)."""
    totals = counts.sum(axis=-1, keepdims=True)
    p = counts / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0)
    return np.asarray(0.0 - terms.sum(axis=-1))


def measure(data: bytes, block: int) -> tuple[float, npt.NDArray[np.float64]]:
    """The entropy of ``data`` and of each ``block``-byte block of it (a shorter last block is one too).
    Each pass counts the bytes of many blocks with one ``bincount``: a byte's value is offset by 256
    times its block's row."""
    total = np.zeros(256, dtype=np.int64)
    per_pass = max(1, min(CHUNK // block, ROWS))
    view = np.frombuffer(data, dtype=np.uint8)
    blocks: list[npt.NDArray[np.float64]] = []
    for start in range(0, len(view), per_pass * block):
        part = view[start:start + per_pass * block]
        n = -(-len(part) // block)
        index = part.astype(np.intp)
        index += np.repeat(np.arange(n, dtype=np.intp) * 256, block)[:len(part)]
        counts = np.bincount(index, minlength=n * 256).reshape(n, 256)
        total += counts.sum(axis=0)
        blocks.append(shannon(counts))
    return float(shannon(total)), np.concatenate(blocks) if blocks else np.zeros(0)
