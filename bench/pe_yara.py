#!/usr/bin/env python3
"""Cost of ``peinfo``'s additions and of ``yara`` with a directory of rule files, in process (plugins set
up once, no engine); median of 5 runs.

* peinfo: the full plugin against the pefile calls the plugin made before resources, version info,
  debug, Rich header, TLS, signature and warnings were added (parse, headers, sections, imphash,
  imports, exports, overlay), on the corpus's PEs.
* yara: ``rules200.yar`` as one file, and the same 202 rules split into 20 files in subdirectories given
  as a directory (one namespace per file) and as an index file of includes: compile time, then the
  match of every corpus file with the externals, with ``recheck`` 10 s (the default) and 0 (the rule
  files' mtimes compared before every match).

Usage: bench/pe_yara.py [CORPUS] [RULES200]   (prints Markdown tables on stdout)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pefile

from _timing import RUNS, median, payload
from stoq_plugins import _pe
from stoq_plugins.peinfo import PeinfoPlugin
from stoq_plugins.yara import YaraPlugin

REPEAT = 50  # calls per PE and run: one call of a 4 KiB PE is too short to time alone


def median_of_one(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def before(data: bytes) -> None:
    """What peinfo 1.0 computed."""
    pe = pefile.PE(data=data)
    _pe.header(pe), _pe.sections(pe, 256), pe.get_imphash(), _pe.imports(pe, 2000), _pe.exports(pe, 2000)
    _pe.overlay(pe, len(data)), len(pe.get_warnings())


def split(rules200: Path, root: Path) -> None:
    """The rules of ``rules200`` in 20 files under 4 subdirectories, and an index file including them."""
    lines = [line for line in rules200.read_text().splitlines() if line.startswith("rule ")]
    includes = []
    for i in range(20):
        rel = f"set{i % 4}/part{i:02d}.yar"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("\n".join(lines[i::20]) + "\n")
        includes.append(f'include "{rel}"\n')
    (root.parent / "index").mkdir()
    (root.parent / "index" / "index.yar").write_text("".join(includes))
    for rel in includes:  # the index's tree: the same files beside it
        name = rel.split('"')[1]
        (root.parent / "index" / name).parent.mkdir(parents=True, exist_ok=True)
        (root.parent / "index" / name).write_text((root / name).read_text())


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    corpus = Path(sys.argv[1] if len(sys.argv) > 1 else here / "../shared/corpus")
    rules200 = Path(sys.argv[2] if len(sys.argv) > 2 else here / "../shared/bench/rules200.yar")

    print("| PE | bytes | peinfo 1.0 calls ms | peinfo 1.1 ms |\n|---|---|---|---|")
    plugin = PeinfoPlugin()
    plugin.setup()
    for name in ("test.exe", "test_xor.exe"):
        data = (corpus / name).read_bytes()
        item = payload(data, name)
        olds, news = [], []
        for _ in range(RUNS):  # interleaved, so that a change of the machine's load hits both alike
            olds.append(median_of_one(lambda: [before(data) for _ in range(REPEAT)]) / REPEAT)
            news.append(median_of_one(lambda: [plugin.scan(item, plugin.options) for _ in range(REPEAT)]) / REPEAT)
        old, new = statistics.median(olds), statistics.median(news)
        print(f"| {name} | {len(data)} | {old * 1000:.2f} | {new * 1000:.2f} |")

    files = [payload(p.read_bytes(), p.name) for p in sorted(corpus.iterdir()) if p.is_file()]
    size = sum(p.size for p in files)
    print(f"\ncorpus: {len(files)} files, {size} bytes\n")
    print("| rules | compile ms | recheck | corpus ms/payload | MB/s |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        split(rules200, tree)
        for label, path in (("rules200.yar, one file", rules200), ("20 files, directory", tree),
                            ("20 files, index of includes", Path(tmp) / "index" / "index.yar")):
            compile_s = median(lambda: YaraPlugin(YaraPlugin.Options(rules=path)).setup())
            for recheck in (10.0, 0.0):
                yp = YaraPlugin(YaraPlugin.Options(rules=path, recheck=recheck))
                yp.setup()
                on_corpus = median(lambda: [yp.scan(p, yp.options) for p in files])
                print(f"| {label} | {compile_s * 1000:.0f} | {recheck:g} s | {on_corpus / len(files) * 1000:.3f} | "
                      f"{size / on_corpus / 1e6:.1f} |")


if __name__ == "__main__":
    main()
