#!/usr/bin/env python3
"""What the metrics hooks cost an embedded scan (issue 19). docs/performance.md quotes its output.

    python bench/metrics.py [--copies 100] [--rounds 5] [--jobs 1]

Rounds interleave `stoq scan` (the core benchmark's command, bench/run.py: `--max-depth 0 --workers
yara,peinfo`, a fresh archive and SQLite store each round) without metrics and with them
(`PROMETHEUS_MULTIPROC_DIR` set to a fresh directory: every plugin run and every stored document
recorded); medians of files/s, and the median of each round's on/off ratio (rounds run back to back,
so a machine whose speed drifts weighs less). Then the hooks alone, in one process: microseconds per
``metrics.plugin_run`` and per document given to ``metrics.stored``, on and off.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the core benchmark's command and files)

HOOKS = r"""
import json, sys, time
from stoq import metrics
N = 200_000
rows = ([("s",)], [], [("s", "p", i, None, 0, "h", "f", None, "{}", None, None, "[]") for i in range(4)], [], [])
start = time.perf_counter()
for _ in range(N):
    metrics.plugin_run("yara", 0.001)
run_us = (time.perf_counter() - start) / N * 1e6
start = time.perf_counter()
for _ in range(N // 10):
    metrics.stored(rows)
stored_us = (time.perf_counter() - start) / (N // 10) * 1e6
print(json.dumps({"enabled": metrics.enabled(), "plugin_run_us": round(run_us, 3), "stored_doc_us": round(stored_us, 3)}))
"""


def hooks(directory: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if directory is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = directory
    out = subprocess.run([sys.executable, "-c", HOOKS], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    files, count, _ = run.prepare_files(args.copies, "stoq-bench-metrics-")
    runs: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(args.rounds):
            runs["off"].append(run.stoq(files, args.jobs, count))
            directory = tempfile.mkdtemp(prefix="stoq-bench-prom-")
            run.VARIANTS["metrics"] = ({"PROMETHEUS_MULTIPROC_DIR": directory}, [])
            try:
                runs["on"].append(run.stoq(files, args.jobs, count, "metrics"))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            print(f"round {r + 1}: off {runs['off'][-1]:.0f}/s  on {runs['on'][-1]:.0f}/s", file=sys.stderr)
        directory = tempfile.mkdtemp(prefix="stoq-bench-prom-")
        try:
            micro = {"off": hooks(None), "on": hooks(directory)}
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        shutil.rmtree(files, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({"files": count, "jobs": args.jobs, "rounds": args.rounds,
                      "median_files_per_s": {k: round(v, 1) for k, v in med.items()},
                      "on_over_off": round(med["on"] / med["off"], 4),
                      "median_of_round_ratios": round(statistics.median(a / b for a, b in zip(runs["on"], runs["off"])), 4),
                      "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
                      "hooks": micro}, indent=2))


if __name__ == "__main__":
    main()
