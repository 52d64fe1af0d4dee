"""Prometheus metrics (issue 19): scraped after real scans, embedded and in the cluster, every count
compared with the numbers computed from the documents themselves; queue depths and the ledger's
gauge compared with the broker and the database read independently."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from helpers import BENCH_RULES, CORPUS, ROOT, amqp_url
from test_cluster import cluster_env, fresh_database, start
from test_web_api import private_env, serve

BIN = Path(sys.executable).parent
DB = "stoq_metrics"
#: Workers with results, an error on some payloads (boom raises on those containing "PK": zips,
#: Office files) and no crash (a crash is recorded by the supervisor, not by a run).
SCAN_ARGS = ["--workers", "yara,entropy,boom", "-o", f"yara.rules={BENCH_RULES}", "-o", "boom.trigger=PK",
             "--format", "jsonl"]
#: The plugins that are not a plugin run when they appear in an error entry.
CORE_STEPS = {"libmagic", "dispatch", "archive", "stoq"}


Samples = list[tuple[str, dict[str, str], float]]


def parse(exposition: str) -> Samples:
    """(sample name, labels, value) of every sample of a scrape."""
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(exposition) for s in family.samples]


def by_label(samples: Samples, name: str, *labels: str) -> dict[Any, float]:
    """The samples of ``name``: the values of ``labels`` (one label: its value) -> value; zeros left out."""
    out: dict[Any, float] = {}
    for sample, values, value in samples:
        if sample == name and value:
            key = tuple(values[label] for label in labels)
            out[key[0] if len(key) == 1 else key] = value
    return out


def expected(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the metrics must say, computed from the documents: a plugin ran on a payload when it
    gave a result (``workers``) or an error entry."""
    runs: Counter[str] = Counter()
    errors: Counter[tuple[str, str]] = Counter()
    flags: Counter[str] = Counter()
    payloads = 0
    for doc in docs:
        for record in doc["results"]:
            payloads += 1
            runs.update(record["workers"].keys())
            flags.update(record["flags"])
        for error in doc["errors"]:
            errors[(error["plugin"], error["kind"])] += 1
            if error["plugin"] not in CORE_STEPS:
                runs[error["plugin"]] += 1
    return {"runs": runs, "errors": errors, "flags": flags, "payloads": payloads, "scans": len(docs)}


def check_counts(samples: Samples, docs: list[dict[str, Any]], **scans: int) -> None:
    """Every count of the scrape against the documents; ``scans``: the other states of stoq_scans_total."""
    want = expected(docs)
    assert want["errors"] and want["runs"]["boom"] > want["errors"][("boom", "error")] > 0  # the scan has both
    assert by_label(samples, "stoq_plugin_runs_total", "plugin") == want["runs"]
    assert by_label(samples, "stoq_plugin_duration_seconds_count", "plugin") == want["runs"]
    buckets = by_label(samples, "stoq_plugin_duration_seconds_bucket", "plugin", "le")
    assert {plugin: v for (plugin, le), v in buckets.items() if le == "+Inf"} == want["runs"]
    assert by_label(samples, "stoq_plugin_errors_total", "plugin", "kind") == want["errors"]
    assert by_label(samples, "stoq_flags_total", "flag") == want["flags"]
    assert by_label(samples, "stoq_payloads_total") == {(): want["payloads"]}
    assert by_label(samples, "stoq_scans_total", "state") == {"finished": want["scans"]} | scans


def scrape_dir(directory: Path) -> str:
    """The exposition of a multiprocess directory, rendered by another process as a server would."""
    code = "import sys; from stoq import metrics; sys.stdout.buffer.write(metrics.exposition()[0])"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    return done.stdout.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_scan_counts_match_its_documents(stoq_env: dict[str, str], testplugins_site: Path,
                                                  tmp_path: Path) -> None:
    """The corpus twice with two workers (64 files queued per worker: both work): three processes
    record (two workers run plugins, the parent stores), and the scrape sums them."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = stoq_env | {"PYTHONPATH": str(testplugins_site), "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    done = subprocess.run([str(BIN / "stoq"), "scan", str(CORPUS), str(CORPUS), *SCAN_ARGS, "-j", "2"], env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr.decode()[-2000:]  # 1: a document has error entries (boom)
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(docs) == 2 * len([p for p in CORPUS.iterdir() if p.is_file()])
    assert len({f.name.split("_")[1] for f in prom.glob("counter_*.db")}) == 3  # parent and two workers
    check_counts(parse(scrape_dir(prom)), docs)


def test_stoq_serve_metrics_without_a_token(testplugins_site: Path, tmp_path: Path) -> None:
    """``stoq serve`` (embedded): the corpus submitted through the API and scanned by the server's
    scanning process and its pool; ``/metrics``, read without a token, counts what their documents
    hold, the submissions the server recorded, and the ledger's scans."""
    env = private_env(tmp_path) | {"PYTHONPATH": str(testplugins_site), "STOQ_WEB_MAX_UPLOAD": str(16 << 20)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = serve(tmp_path, env)
    try:
        token = server.token("metrics")
        files = [("file", (p.name, p.read_bytes())) for p in sorted(CORPUS.iterdir()) if p.is_file()]
        answer = server.post("/api/scans", token, files=files,
                             data={"workers": "yara,entropy,boom", "option": [f"yara.rules={BENCH_RULES}", "boom.trigger=PK"]})
        assert answer.status_code == 202, answer.text
        ids = [s["scan_id"] for s in answer.json()["scans"]]
        docs = [server.finished(scan_id, token, timeout=120)["document"] for scan_id in ids]
        assert server.get("/api/scans", None).status_code == 401  # the API needs a token, /metrics does not
        scraped = server.get("/metrics", None)
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        samples = parse(scraped.text)
        check_counts(samples, docs, submitted=len(files))
        assert by_label(samples, "stoq_ledger_scans", "state") == {"finished": len(files)}
        assert not [name for name, _, _ in samples if name == "stoq_queue_depth"]  # embedded: no broker
        private = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", server.log.read_text())
    finally:
        server.stop()
    assert private is not None and not Path(private[1]).exists()  # removed when the server stopped


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        assert response.status == 200
        return response.read().decode()


def test_cluster_worker_serves_every_pool_process(testplugins_site: Path, tmp_path: Path) -> None:
    """A real worker (prefork, two pool processes) with ``metrics_port``: its scrape sums what both
    processes and the main one recorded, equal to the submitted documents' numbers; the depth of a
    queue no worker serves is its LLEN; the ledger's gauge is the ledger's rows by state."""
    fresh_database(DB)
    port = free_port()
    env = cluster_env(tmp_path, testplugins_site, (14, 15), DB) | {"STOQ_METRICS_PORT": str(port)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the worker makes a private one
    upgraded = subprocess.run([str(BIN / "stoq"), "db", "upgrade"], env=env, capture_output=True)
    assert upgraded.returncode == 0, upgraded.stderr
    worker = start(tmp_path, env, "-c", "2", "-X", "basicworker")  # basicworker's queue is served by no one
    try:
        submitted = worker.stoq("submit", str(CORPUS), *SCAN_ARGS, timeout=120)
        assert submitted.returncode == 1, submitted.stderr.decode()[-2000:]  # boom
        docs = [json.loads(line) for line in submitted.stdout.splitlines()]
        samples = parse(scrape(port))
        check_counts(samples, docs)
        served = [line for line in worker.log.read_text().splitlines() if "serving metrics" in line]
        private = Path(served[0].rsplit(" from ", 1)[1])
        recorded = {f.stem.split("_")[1] for f in private.glob("histogram_*.db")}
        assert len(recorded) == 2 and str(worker.worker.pid) not in recorded  # both pool processes ran plugins
        assert by_label(samples, "stoq_ledger_scans", "state") == {"finished": len(docs)}

        # Scans that stay pending: their only plugin's queue is served by no worker.
        waiting = [str(CORPUS / name) for name in ("test.txt", "test.exe", "test.pdf")]
        sent = worker.stoq("submit", *waiting, "--workers", "basicworker", "--no-wait")
        assert sent.returncode == 0, sent.stderr.decode()
        assert len(sent.stdout.split()) == len(waiting)
        broker = redis.Redis.from_url(env["STOQ_BROKER_URL"])
        def others() -> list[bytes]:  # queues holding tasks, basicworker's aside (kombu's queues are lists)
            return [k for k in broker.scan_iter(_type="list") if not k.startswith(b"basicworker") and broker.llen(k)]

        deadline = time.monotonic() + 30
        quiet = 0  # published, fanned out, and what the served plugins (trailer on test.exe) had to do done
        while quiet < 3 or not broker.llen("basicworker"):
            assert time.monotonic() < deadline, ("the publish did not happen", others())
            quiet = 0 if others() else quiet + 1
            time.sleep(0.2)
        before = broker.llen("basicworker")
        samples = parse(scrape(port))
        assert broker.llen("basicworker") == before > 0
        depths = by_label(samples, "stoq_queue_depth", "queue")
        assert depths.get("basicworker") == before
        assert set(depths) == {"basicworker"}  # every other queue is empty (zeros are left out by by_label)
        assert {labels["queue"] for name, labels, _ in samples if name == "stoq_queue_depth"} >= {
            "stoq", "stoq-collect", "yara", "boom"}
        with create_engine(env["STOQ_DATABASE_URL"]).connect() as conn:
            rows = {state: n for state, n in conn.execute(text("SELECT state, count(*) FROM scan_ledger GROUP BY state"))}
        assert rows == {"finished": len(docs), "pending": len(waiting)}
        assert by_label(samples, "stoq_ledger_scans", "state") == rows
    finally:
        worker.stop()
        redis.Redis.from_url(env["STOQ_BROKER_URL"]).flushdb()
        redis.Redis.from_url(env["STOQ_RESULT_BACKEND"]).flushdb()
    assert len([line for line in worker.log.read_text().splitlines() if "serving metrics" in line]) == 1
    assert private.name.startswith("stoq-metrics-") and not private.exists()  # removed at shutdown


def test_queue_names_are_the_queues_the_workers_declare() -> None:
    """``stoq serve`` in front of a cluster reads the depth of the queues ``register_plugins`` declares."""
    from celery import Celery

    from stoq.metrics_live import queue_names
    from stoq.tasks.adapter import register_plugins

    app = Celery("queues-test")
    register_plugins(app)
    assert sorted(queue_names()) == sorted(q.name for q in app.conf.task_queues)


def test_label_values_are_bounded(tmp_path: Path) -> None:
    """Past ``MAX_LABELS`` distinct flags a process counts the others as ``other``."""
    code = ("import sys; from stoq import metrics\n"
            "metrics.MAX_LABELS = 3\n"
            "edges = [tuple(range(11)) + (f'[\"f:{i}\"]',) for i in range(5)]\n"
            "metrics.stored(([('s',)], [], edges, [], []))\n"
            "sys.stdout.buffer.write(metrics.exposition()[0])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert by_label(parse(done.stdout.decode()), "stoq_flags_total", "flag") == {"f:0": 1, "f:1": 1, "f:2": 1, "other": 2}


def test_without_the_directory_nothing_is_recorded(stoq_env: dict[str, str], tmp_path: Path) -> None:
    """A plain scan (no PROMETHEUS_MULTIPROC_DIR) records nothing; without prometheus-client at all,
    a scan with the directory set still works and every hook is a no-op."""
    code = ("import sys, os\n"
            "if sys.argv[1] == 'absent': sys.modules['prometheus_client'] = None\n"
            "from stoq import metrics\n"
            "from stoq.cli import main\n"
            "print(metrics.available(), metrics.enabled(), metrics.ensure_dir(), file=sys.stderr)\n"
            "sys.argv = ['stoq', 'scan', sys.argv[2], '--workers', 'entropy', '--format', 'jsonl']\n"
            "main()\n")
    prom = tmp_path / "prom"
    prom.mkdir()
    absent = subprocess.run([sys.executable, "-c", code, "absent", str(CORPUS / "test.zip")],
                            env=stoq_env | {"PROMETHEUS_MULTIPROC_DIR": str(prom)}, capture_output=True, timeout=60)
    assert absent.returncode == 0, absent.stderr.decode()
    assert absent.stderr.decode().splitlines()[0] == "False False None"
    assert json.loads(absent.stdout)["payloads"] > 1
    plain = subprocess.run([sys.executable, "-c", code, "present", str(CORPUS / "test.zip")], env=stoq_env,
                           capture_output=True, timeout=60)
    assert plain.returncode == 0, plain.stderr.decode()
    assert plain.stderr.decode().splitlines()[0].startswith("True False /")  # a private directory, once asked
    assert list(prom.iterdir()) == []


@pytest.mark.rabbitmq
def test_amqp_queue_depth_is_a_passive_declare() -> None:
    """RabbitMQ: the messages ready in a queue; a queue never declared holds none."""
    from kombu import Connection, Exchange, Producer, Queue

    from stoq.metrics_live import amqp_depths

    url = amqp_url()
    name = f"stoq-metrics-test-{uuid.uuid4().hex[:8]}"
    with Connection(url) as conn:
        queue = Queue(name, Exchange(""), routing_key=name, auto_delete=False)
        bound = queue(conn.default_channel)
        bound.declare()
        try:
            producer = Producer(conn.default_channel)
            for i in range(3):
                producer.publish({"n": i}, routing_key=name)
            deadline = time.monotonic() + 5
            while (depths := amqp_depths(url, [name, name + "-absent"]))[name] != 3:
                assert time.monotonic() < deadline, depths
                time.sleep(0.05)
            assert depths == {name: 3, name + "-absent": 0}
        finally:
            bound.delete()


#: Every sample name stoq exports (docs/metrics.md describes each metric).
EXPORTED = {"stoq_plugin_runs_total", "stoq_plugin_duration_seconds_bucket", "stoq_plugin_duration_seconds_sum",
            "stoq_plugin_duration_seconds_count", "stoq_plugin_errors_total", "stoq_flags_total",
            "stoq_payloads_total", "stoq_scans_total", "stoq_queue_depth", "stoq_ledger_scans"}
#: The PromQL functions, aggregations and keywords the dashboard may use.
PROMQL = {"rate", "increase", "sum", "max", "topk", "histogram_quantile", "by"}


def test_grafana_dashboard_uses_only_stoq_metrics() -> None:
    """Every panel's expression names only samples stoq exports, and every metric has a panel and a
    description in docs/metrics.md."""
    board = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    used: set[str] = set()
    for expr in exprs:
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r'"[^"]*"|\[[^]]*\]', "", expr)))
        metrics_named = {w for w in words if w.startswith("stoq_")}
        labels = set(re.findall(r"by \(([^)]*)\)", expr))
        label_words = {w.strip() for group in labels for w in group.split(",")}
        assert metrics_named, expr
        assert words - metrics_named - label_words <= PROMQL, (expr, words - metrics_named - label_words - PROMQL)
        used |= metrics_named
    assert used <= EXPORTED, used - EXPORTED
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in EXPORTED}
    assert {re.sub(r"_(bucket|sum|count)$", "", n) for n in used} == families  # every metric has a panel
    documented = set(re.findall(r"^\| `(stoq_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    assert documented == families


def test_the_exported_names_are_the_documented_ones(tmp_path: Path) -> None:
    """What a process records, scraped: exactly the names of ``EXPORTED`` (less the gauges read at
    scrape time, which need a broker and a store)."""
    code = ("import sys; from stoq import metrics\n"
            "metrics.plugin_run('yara', 0.002)\n"
            "metrics.stored(([('s',)], [], [tuple(range(11)) + ('[\"limit:depth\"]',)], [], [('s', 'p', 'yara', 'error', 'm', 0)]))\n"
            "sys.stdout.buffer.write(metrics.exposition()[0])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")} | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    samples = parse(done.stdout.decode())
    assert {name for name, _, _ in samples} == EXPORTED - {"stoq_queue_depth", "stoq_ledger_scans"}
    assert by_label(samples, "stoq_flags_total", "flag") == {"limit:depth": 1}
    assert by_label(samples, "stoq_plugin_errors_total", "plugin", "kind") == {("yara", "error"): 1}
    assert by_label(samples, "stoq_plugin_duration_seconds_bucket", "plugin", "le")[("yara", "0.0025")] == 1
