#!/usr/bin/env python3
"""Cluster benchmark (issue: distributed pipeline). Interleaves rounds of the one-process bare loop and
of `stoq submit DIR --wait` against real `celery -A stoq worker` processes (Redis broker and result
backend, PostgreSQL store, Flower not running), then measures latency and per-payload costs.

    python bench/cluster.py [--copies 10] [--rounds 5] [--latency 50]

With ``--pool``, the comparison the durability issue states its target with: rounds interleave the
bare loop in a 2-process pool and the cluster with 2 worker processes; ``--before CHECKOUT`` adds the
same cluster run from another checkout (its ``.venv``: e.g. the code before a change), alternating
which of the two goes first, and the idle latency of both, alternately:

    python bench/cluster.py --pool --copies 100 --rounds 5 --latency 50 --before ../tasks-before
    python bench/cluster.py --pool ... --compare ledger=../tasks-after --compare before=../tasks-before

Needs Redis (databases 6 and 7 are flushed) and PostgreSQL (database stoq_bench is recreated) on
loopback, as the tests do. ``--lock`` takes the test suite's service lock (``/tmp/stoq-services.lock``)
around each round (each timed run outside ``--pool``), so that no cluster test shares the machine (or
those databases) with it.
Prints a JSON report; docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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

LOCK = Path("/tmp/stoq-services.lock")
_LOCKING = False
_HELD = 0


@contextlib.contextmanager
def services() -> Any:
    """The test suite's service lock around a timed run or a round, with ``--lock``; nothing
    otherwise (or when this process holds it already)."""
    global _HELD
    if not _LOCKING or _HELD:
        yield
        return
    with open(LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD += 1
        try:
            yield
        finally:
            _HELD -= 1
            fcntl.flock(handle, fcntl.LOCK_UN)


def load() -> float:
    """The one-minute load average, noted beside each round."""
    return os.getloadavg()[0]


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

    def __init__(self, procs: int, bin_dir: Path = BIN, **extra: str) -> None:
        self.bin = bin_dir
        self.work = Path(tempfile.mkdtemp(prefix="stoq-cbench-"))
        for url in (BROKER, BACKEND):
            redis.Redis.from_url(url).flushdb()
        fresh_database()
        self.env = environment(self.work, **extra)
        subprocess.run([str(self.bin / "stoq"), "db", "upgrade"], env=self.env, check=True, capture_output=True)
        self.proc = subprocess.Popen([str(self.bin / "celery"), "-A", "stoq", "worker", "-c", str(procs), "--without-gossip",
                                      "--without-mingle", "--without-heartbeat", "-l", "warning",
                                      "--logfile", str(self.work / "worker.log")], env=self.env, cwd=self.work,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ping = [str(self.bin / "celery"), "-A", "stoq", "inspect", "ping", "-t", "1"]
        while subprocess.run(ping, env=self.env, capture_output=True).returncode != 0:
            if self.proc.poll() is not None:
                raise SystemExit((self.work / "worker.log").read_text())

    def warm(self) -> None:
        """A first submission (the corpus itself): each pool process builds its engine for the
        profile (YARA compilation) before the timed run, as on a cluster that is already serving."""
        self.submit(SHARED / "corpus", sum(1 for p in (SHARED / "corpus").iterdir() if p.is_file()
                                           and p.name not in ("README.md", "expected_children.json")) + 2)

    def submit(self, files: Path, count: int) -> float:
        cmd = [str(self.bin / "stoq"), "submit", str(files), "--recursive", "--wait", "--max-depth", "0",
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


def throughput(files: Path, count: int, procs: int, bin_dir: Path = BIN) -> float:
    with services():
        workers = Workers(procs, bin_dir)
        try:
            workers.warm()
            return workers.submit(files, count)
        finally:
            workers.stop()


def bare_pool(files: Path, jobs: int) -> float:
    with services():
        return bare(files, jobs)


def latency_of(checkout: Path | None, samples: int) -> dict[str, Any]:
    """``latency`` run by ``checkout``'s interpreter (its stoq), in a process of its own; this one's
    when ``checkout`` is None."""
    python = (checkout / ".venv" / "bin" / "python") if checkout else Path(sys.executable)
    with services():
        out = subprocess.run([str(python), str(Path(__file__).resolve()), "--latency-only", str(samples)],
                             check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def pool_comparison(files: Path, count: int, rounds: int, samples: int,
                    others: dict[str, Path]) -> dict[str, Any]:
    """Rounds of the bare 2-process pool, this checkout's cluster (2 worker processes, ``after``) and
    each of the ``others`` checkouts' (name -> checkout), the clusters' order rotating from round to
    round; then the idle latency of each, in turn, twice (``samples`` each time, pooled)."""
    checkouts: dict[str, Path | None] = {"after": None} | dict(others)
    sides = {name: (path / ".venv" / "bin" if path else BIN) for name, path in checkouts.items()}
    runs: dict[str, list[float]] = {"bare2": [], **{k: [] for k in sides}}
    loads: list[float] = []
    for r in range(rounds):
        with services():  # a round at a time: its runs see the same machine
            loads.append(round(load(), 2))
            runs["bare2"].append(bare_pool(files, 2))
            order = list(sides)[r % len(sides):] + list(sides)[:r % len(sides)]
            for side in (order if r % 2 == 0 else order[::-1]):
                runs[side].append(throughput(files, count, 2, sides[side]))
        print(f"round {r + 1} (load {loads[-1]}): " + "  ".join(f"{k} {v[-1]:.0f}/s" for k, v in runs.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    report: dict[str, Any] = {
        "files": count, "rounds": rounds, "load_average_1min": loads,
        "median_payloads_per_s": {k: round(v, 1) for k, v in med.items()},
        "over_bare2": {k: round(med[k] / med["bare2"], 3) for k in sides},
        "all_runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        # each round's own ratio: the machine's drift between rounds cancels out
        "round_ratios": {k: [round(a / b, 3) for a, b in zip(runs[k], runs["bare2"])] for k in sides},
    }
    if samples:
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(2):
            with services():
                for side in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    times[side] += latency_of(checkouts[side], samples)["times_ms"]
        report["latency_idle_single_file"] = {k: percentiles(v) for k, v in times.items()}
    return report


def percentiles(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
            "samples": len(times)}


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
        return percentiles(times) | {"times_ms": [round(t, 2) for t in times]}
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
    parser.add_argument("--pool", action="store_true", help="against the bare 2-process pool (see the docstring)")
    parser.add_argument("--before", type=Path, help="with --pool: another checkout (with its .venv) to compare")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=CHECKOUT",
                        help="with --pool: more checkouts to compare, each under its name")
    parser.add_argument("--lock", action="store_true", help="take the test suite's service lock per round")
    parser.add_argument("--latency-only", type=int, metavar="SAMPLES", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global _LOCKING
    _LOCKING = args.lock
    if args.latency_only:
        print(json.dumps(latency(args.latency_only)))
        return
    files, count, size = prepare_files(args.copies, "stoq-cbench-files-")
    if args.costs_only:
        print(json.dumps({"files": count, "per_payload": costs(files, count)}, indent=2))
        return
    if args.pool:
        others = ({"before": args.before} if args.before else {}) | {
            name: Path(path) for name, path in (c.split("=", 1) for c in args.compare)}
        for checkout in others.values():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "stoq"),
                            str(checkout / "plugins")], check=True)
        print(json.dumps(pool_comparison(files, count, args.rounds, args.latency, others), indent=2))
        shutil.rmtree(files, ignore_errors=True)
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
        "latency_idle_single_file": {k: v for k, v in latency(args.latency).items() if k != "times_ms"}
        if args.latency else None,
        "per_payload": costs(files, count),
    }
    print(json.dumps(report, indent=2))
    shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
