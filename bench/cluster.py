#!/usr/bin/env python3
"""Cluster benchmark (issue: distributed pipeline). Interleaves rounds of the one-process bare loop and
of `stoq submit DIR --wait` against real `celery -A stoq worker` processes (Redis broker and result
backend, PostgreSQL store, Flower not running), then measures latency and per-payload costs.

    python bench/cluster.py [--copies 10] [--rounds 5] [--latency 50]

Needs Redis (databases 6 and 7 are flushed) and PostgreSQL (database stoq_bench is recreated) on
loopback, as the tests do. Prints a JSON report; docs/performance.md quotes it.
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
from typing import Any

import redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
RULES = SHARED / "bench" / "rules200.yar"
BIN = Path(sys.executable).parent
PG = os.environ.get("STOQ_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432")
BROKER, BACKEND = "redis://127.0.0.1:6379/6", "redis://127.0.0.1:6379/7"
sys.path.insert(0, str(ROOT / "bench"))
from run import bare, prepare_files  # noqa: E402


def environment(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update(STOQ_BROKER_URL=BROKER, STOQ_RESULT_BACKEND=BACKEND, STOQ_ARCHIVE=str(work / "archive"),
               STOQ_DATABASE_URL=f"{PG}/stoq_bench", XDG_DATA_HOME=str(work / "data"), **extra)
    return env


def fresh_database() -> None:
    with create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "stoq_bench" WITH (FORCE)'))
        conn.execute(text('CREATE DATABASE "stoq_bench"'))


class Workers:
    """`celery -A stoq worker -c N` in its own work directory (fresh archive and database)."""

    def __init__(self, procs: int, **extra: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="stoq-cbench-"))
        for url in (BROKER, BACKEND):
            redis.Redis.from_url(url).flushdb()
        fresh_database()
        self.env = environment(self.work, **extra)
        subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=self.env, check=True, capture_output=True)
        self.proc = subprocess.Popen([str(BIN / "celery"), "-A", "stoq", "worker", "-c", str(procs), "--without-gossip",
                                      "--without-mingle", "--without-heartbeat", "-l", "warning",
                                      "--logfile", str(self.work / "worker.log")], env=self.env, cwd=self.work,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ping = [str(BIN / "celery"), "-A", "stoq", "inspect", "ping", "-t", "1"]
        while subprocess.run(ping, env=self.env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None:
                raise SystemExit((self.work / "worker.log").read_text())

    def warm(self) -> None:
        """A first submission (the corpus itself): each pool process builds its engine for the
        profile (YARA compilation) before the timed run, as on a cluster that is already serving."""
        self.submit(SHARED / "corpus", sum(1 for p in (SHARED / "corpus").iterdir() if p.is_file()
                                           and p.name not in ("README.md", "expected_children.json")) + 2)

    def submit(self, files: Path, count: int) -> float:
        cmd = [str(BIN / "stoq"), "submit", str(files), "--recursive", "--wait", "--max-depth", "0",
               "--workers", "yara,peinfo", "-o", f"yara.rules={RULES}", "--format", "jsonl", "--no-progress"]
        with open(self.work / "out.jsonl", "wb") as out:
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=self.env, stdout=out, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            raise SystemExit(f"stoq submit failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
        lines = (self.work / "out.jsonl").read_bytes().count(b"\n")
        if lines != count:
            raise SystemExit(f"stoq submit printed {lines} documents for {count} files")
        return count / elapsed

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        shutil.rmtree(self.work, ignore_errors=True)


def throughput(files: Path, count: int, procs: int) -> float:
    workers = Workers(procs)
    try:
        workers.warm()
        return workers.submit(files, count)
    finally:
        workers.stop()


def latency(samples: int) -> dict[str, float]:
    """A warm client in this process: publish one small file, wait for its committed document."""
    workers = Workers(2)
    try:
        os.environ.update(workers.env)
        from stoq.config import load_settings
        from stoq.tasks.client import ClusterClient, new_notify_key

        client = ClusterClient(load_settings(overrides={"workers": "yara,peinfo", "max_depth": 0},
                                             plugin_options={"yara": {"rules": str(RULES)}}))
        small = workers.work / "small"
        small.mkdir()
        times = []
        for i in range(samples + 5):  # the first five warm the workers' engines up
            path = small / f"s{i}.txt"
            path.write_bytes(f"a small file {i}\n".encode())
            notify = new_notify_key()
            start = time.perf_counter()
            (sent,) = client.submit([path], notify)
            next(client.documents(notify, {sent.scan_id}))
            if i >= 5:
                times.append((time.perf_counter() - start) * 1000)
        client.close()
        times.sort()
        return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
                "samples": samples}
    finally:
        workers.stop()


def costs(files: Path, count: int) -> dict[str, Any]:
    """Broker messages, Redis commands and PostgreSQL transactions per payload (one instrumented run)."""
    workers = Workers(2, STOQ_MEASURE_MESSAGES="1")
    try:
        r = redis.Redis.from_url(BACKEND)
        calls = lambda: sum(v["calls"] for k, v in r.info("commandstats").items())  # noqa: E731
        with create_engine(f"{PG}/postgres").connect() as conn:
            commits = lambda: conn.execute(text(  # noqa: E731
                "SELECT xact_commit FROM pg_stat_database WHERE datname = 'stoq_bench'")).scalar()
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            c0, x0 = calls(), commits()
            workers.submit(files, count)
            time.sleep(1)  # statistics are reported by backends asynchronously
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            c1, x1 = calls(), commits()
        tasks = int(r.get("stoq:measure:task:count") or 0)
        return {"task_messages_per_payload": round(tasks / count, 3),
                "redis_commands_per_payload": round((c1 - c0) / count, 2),
                "postgres_transactions_per_payload": round((x1 - x0) / count, 3),
                "largest_task_message_bytes": int(r.get("stoq:measure:task:max") or 0),
                "largest_result_bytes": int(r.get("stoq:measure:result:max") or 0)}
    finally:
        workers.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=int, default=50)
    parser.add_argument("--costs-only", action="store_true", help="only the instrumented per-payload run")
    args = parser.parse_args()
    files, count, size = prepare_files(args.copies, "stoq-cbench-files-")
    if args.costs_only:
        print(json.dumps({"files": count, "per_payload": costs(files, count)}, indent=2))
        return
    runs: dict[str, list[float]] = {"bare1": [], "cluster2": [], "cluster1": []}
    for r in range(args.rounds):
        runs["bare1"].append(bare(files, 1))
        runs["cluster2"].append(throughput(files, count, 2))
        runs["cluster1"].append(throughput(files, count, 1))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "files": count, "mean_size": round(size / count), "rounds": args.rounds,
        "median_payloads_per_s": {k: round(v, 1) for k, v in med.items()},
        "cluster2_over_bare1": round(med["cluster2"] / med["bare1"], 3),
        "cluster1_over_bare1": round(med["cluster1"] / med["bare1"], 3),
        "cluster_speedup_1_to_2": round(med["cluster2"] / med["cluster1"], 3),
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "latency_idle_single_file": latency(args.latency) if args.latency else None,
        "per_payload": costs(files, count),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
