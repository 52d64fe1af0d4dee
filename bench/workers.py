#!/usr/bin/env python3
"""Cost of the analysis workers hash, entropy, filetype and xorsearch: each plugin's ``scan`` called in
process (set up once, no engine), on every corpus file and on a 16 MiB random buffer; median of 5 runs.
Also the byte-counting choices the entropy worker was decided on (numpy against plain Python).

Usage: bench/workers.py [CORPUS]   (prints a Markdown table on stdout)
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from _timing import median, payload
from stoq_plugins.entropy import EntropyPlugin
from stoq_plugins.filetype import FiletypePlugin
from stoq_plugins.hash import HashPlugin
from stoq_plugins.xorsearch import XorsearchPlugin


def main() -> None:
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "../shared/corpus")
    files = [payload(p.read_bytes(), p.name) for p in sorted(corpus.iterdir()) if p.is_file()]
    size = sum(p.size for p in files)
    big = [payload(os.urandom(16 * 1024 * 1024), None)]
    print(f"corpus: {len(files)} files, {size} bytes; random: 16 MiB\n")
    print("| plugin | corpus ms/payload | corpus MB/s | 16 MiB random MB/s |\n|---|---|---|---|")
    for cls in (HashPlugin, EntropyPlugin, FiletypePlugin, XorsearchPlugin):
        plugin = cls()
        plugin.setup()
        plugin.scan(files[0], plugin.options)  # magika loads its model on first use
        on_corpus = median(lambda: [plugin.scan(p, plugin.options) for p in files])
        on_big = median(lambda: plugin.scan(big[0], plugin.options))
        print(f"| {cls.name} | {on_corpus / len(files) * 1000:.2f} | {size / on_corpus / 1e6:.1f} | "
              f"{big[0].size / on_big / 1e6:.1f} |")
    print("\nByte counts (256 bins) of the whole corpus:\n\n| method | MB/s |\n|---|---|")
    contents = [p.content for p in files]
    for name, count in [("numpy.bincount", lambda b: np.bincount(np.frombuffer(b, dtype=np.uint8), minlength=256)),
                        ("bytes.count x 256", lambda b: [b.count(bytes([i])) for i in range(256)]),
                        ("collections.Counter", Counter)]:
        print(f"| {name} | {size / median(lambda: [count(b) for b in contents]) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
