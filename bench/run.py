#!/usr/bin/env python3
"""Embedded benchmark (issue: core). Interleaves rounds of the bare loop and of `stoq scan` over unique
copies of the sample corpus and prints medians; docs/performance.md quotes its output.

    python bench/run.py [--copies 100] [--rounds 5]

Each `stoq scan` round gets a fresh archive and SQLite store (nothing gains from a previous round);
both sides are timed as whole commands, start-up included. Throughput = payloads / seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
RULES = SHARED / "bench" / "rules200.yar"
BIN = Path(sys.executable).parent


def bare(files: Path, jobs: int) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bare.py"), str(RULES), str(files), "--jobs", str(jobs)],
                         check=True, capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - start
    return json.loads(out)["payloads"] / elapsed


#: Variants of the stoq command for `--decompose`: extra environment and arguments.
VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "stoq": ({}, []),
    "no-archive": ({"STOQ_ARCHIVER": "none"}, []),
    "no-archive-no-store": ({"STOQ_ARCHIVER": "none"}, ["--no-store"]),
}


def stoq(files: Path, jobs: int, count: int, variant: str = "stoq") -> float:
    work = Path(tempfile.mkdtemp(prefix="stoq-bench-"))
    extra_env, extra_args = VARIANTS[variant]
    env = dict(os.environ, STOQ_ARCHIVE=str(work / "archive"), STOQ_DATABASE_URL=f"sqlite:///{work / 'stoq.db'}",
               XDG_DATA_HOME=str(work / "data"), **extra_env)
    cmd = [str(BIN / "stoq"), "scan", str(files), "--recursive", "--jobs", str(jobs), "--max-depth", "0",
           "--workers", "yara,peinfo", "-o", f"yara.rules={RULES}", "--format", "jsonl", "--no-progress",
           *extra_args]
    try:
        with open(work / "out.jsonl", "wb") as out:
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            raise SystemExit(f"stoq failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = (work / "out.jsonl").read_bytes().count(b"\n")
        if lines != count:
            raise SystemExit(f"stoq printed {lines} documents for {count} files")
        return count / elapsed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare_files(copies: int, prefix: str) -> tuple[Path, int, int]:
    """Compiles the checkout's bytecode (as an installed package has it), then makes ``copies`` unique
    copies of the corpus; returns their directory, their number and their total size."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "stoq"), str(ROOT / "plugins")], check=True)
    files = Path(tempfile.mkdtemp(prefix=prefix))
    subprocess.run([sys.executable, str(SHARED / "bench" / "make_unique.py"), str(SHARED / "corpus"), str(files),
                    str(copies)], check=True, capture_output=True)
    count = sum(len(names) for _, _, names in os.walk(files))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(files) for f in names)
    return files, count, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--decompose", action="store_true",
                        help="instead: one process, bare loop vs stoq with and without archive and store")
    args = parser.parse_args()
    files, count, size = prepare_files(args.copies, "stoq-bench-files-")
    if args.decompose:
        parts: dict[str, list[float]] = {"bare1": [], **{v: [] for v in VARIANTS}}
        for r in range(args.rounds):
            parts["bare1"].append(bare(files, 1))
            for variant in VARIANTS:
                parts[variant].append(stoq(files, 1, count, variant))
            print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f}/s" for k, v in parts.items()), file=sys.stderr)
        meds = {k: statistics.median(v) for k, v in parts.items()}
        print(json.dumps({"files": count, "rounds": args.rounds, "median_payloads_per_s": meds,
                          "over_bare1": {k: round(v / meds["bare1"], 3) for k, v in meds.items()}}, indent=2))
        shutil.rmtree(files, ignore_errors=True)
        return
    runs: dict[str, list[float]] = {"bare1": [], "stoq1": [], "bare2": [], "stoq2": []}
    for r in range(args.rounds):
        runs["bare1"].append(bare(files, 1))
        runs["stoq1"].append(stoq(files, 1, count))
        runs["bare2"].append(bare(files, 2))
        runs["stoq2"].append(stoq(files, 2, count))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "files": count, "mean_size": size / count, "rounds": args.rounds,
        "median_payloads_per_s": {k: round(v, 1) for k, v in med.items()},
        "stoq1_over_bare1": round(med["stoq1"] / med["bare1"], 3),
        "bare_speedup_1_to_2": round(med["bare2"] / med["bare1"], 3),
        "stoq_speedup_1_to_2": round(med["stoq2"] / med["stoq1"], 3),
        "speedup_ratio": round((med["stoq2"] / med["stoq1"]) / (med["bare2"] / med["bare1"]), 3),
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
