#!/usr/bin/env python3
"""Each scan plugin's cost on the corpus (issue 14): ms per payload and MB/s, on the payloads the
plugin runs on with the bundled dispatch and every bundled worker enabled.

    python bench/plugins.py [--rounds 5] [--rules RULES] [--json]

One embedded scan of every file of ../shared/corpus (extraction on, every worker in the worker set)
finds which plugin runs on which payload (roots and extracted children, duplicates once); then, in one
process, each plugin is called through the engine's own step (``Engine.run_one``: ``accepts``, the time
limit, the error capture) on each of its payloads, ``--rounds`` times; the median round gives ms per
payload and MB/s. For workers, the same on *every* distinct payload (what running the worker on all of
them would cost, ``accepts`` declining some): the figure routing saves. Prints a Markdown table (or JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "corpus"
SKIP = {"README.md", "expected_children.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rules", type=Path, help="yara.rules for the yara worker (default: its bundled rules)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args()

    from stoq.config import load_settings
    from stoq.dispatch import Planned
    from stoq.engine import Engine
    from stoq.plugin import Payload
    from stoq.registry import Registry

    work = Path(tempfile.mkdtemp(prefix="stoq-bench-plugins-"))
    registry = Registry.discover()
    workers = sorted(c.name for c in registry.scan_plugins() if c.category == "worker")
    options = {"yara": {"rules": str(args.rules)}} if args.rules else {}
    settings = load_settings(env={"STOQ_ARCHIVE": str(work / "archive"), "STOQ_ARCHIVER": "directory"},
                             overrides={"workers": ",".join(workers)}, plugin_options=options)
    engine = Engine(settings, registry)
    ran: dict[str, list[str]] = {}  # plugin -> sha256 of the payloads it answered (or failed) on
    records: dict[str, dict[str, Any]] = {}
    for name in sorted(os.listdir(CORPUS)):
        if name in SKIP or not (CORPUS / name).is_file():
            continue
        doc = engine.scan((CORPUS / name).read_bytes(), name, {"path": name})
        by_id = {r["payload_id"]: r for r in doc["results"]}
        for record in doc["results"]:
            if record["duplicate_of"] is None and record["sha256"] not in records:
                records[record["sha256"]] = record
                for plugin in record["workers"]:
                    ran.setdefault(plugin, []).append(record["sha256"])
        for error in doc["errors"]:
            record = by_id.get(error["payload_id"])
            if record is not None and error["plugin"] in engine.plugin_classes:
                ran.setdefault(error["plugin"], []).append(record["sha256"])
    engine.archive.flush()
    contents = {sha: engine.archive.get(sha) for sha in records}

    def payload(sha: str) -> Payload:
        r = records[sha]
        return Payload(contents[sha], r["payload_id"], r["filename"], r["mime"], sha, r["depth"], r["meta"] or {})

    def cost(plugin: str, shas: list[str]) -> dict[str, Any]:
        payloads = [payload(s) for s in dict.fromkeys(shas)]
        size = sum(p.size for p in payloads)
        engine.run_one(plugin, payloads[0], Planned(plugin))  # first use: set-up, lazy imports, models
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for p in payloads:
                engine.run_one(plugin, p, Planned(plugin))
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        return {"payloads": len(payloads), "bytes": size, "ms_per_payload": round(seconds / len(payloads) * 1000, 3),
                "mb_per_s": round(size / seconds / 1e6, 2) if seconds else None, "seconds": round(seconds, 4)}

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]},
        "distinct_payloads": len(records), "bytes": sum(len(c) for c in contents.values()), "plugins": {}}
    for plugin in sorted(ran):
        entry = {"category": engine.plugin_classes[plugin].category, "routed": cost(plugin, ran[plugin])}
        if entry["category"] == "worker":
            entry["every_payload"] = cost(plugin, list(records))
        report["plugins"][plugin] = entry
        print(f"measured {plugin}", file=sys.stderr)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['distinct_payloads']} distinct payloads, {report['bytes']} bytes; load average "
          f"{report['machine']['load_average_1_5_15']} -> {report['machine']['load_average_after']}\n")
    print("| plugin | category | payloads it runs on | ms/payload | MB/s | every payload: ms/payload | MB/s |")
    print("|---|---|---|---|---|---|---|")
    for plugin, e in report["plugins"].items():
        r, every = e["routed"], e.get("every_payload")
        tail = f"{every['ms_per_payload']} | {every['mb_per_s']}" if every else "| "
        print(f"| {plugin} | {e['category']} | {r['payloads']} ({r['bytes'] / 1e3:.0f} kB) | {r['ms_per_payload']} | "
              f"{r['mb_per_s']} | {tail} |")


if __name__ == "__main__":
    main()
