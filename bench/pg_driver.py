"""psycopg2 or psycopg 3 for the PostgreSQL result store? The store's write path (``Store._save_pg``: one
query string of one ``INSERT ... json_to_recordset`` per table, autocommit) and its read path
(``Store.get`` through SQLAlchemy), each driver on the same documents, rounds interleaved, medians.

    .venv/bin/pip install 'psycopg[binary]'   # LGPL, not a stoq dependency: only for this comparison
    .venv/bin/python bench/pg_driver.py [--docs 2000] [--batch 100] [--rounds 5]

The documents are those of ``stoq scan`` over ../shared/corpus (no store), each saved again under new
scan and payload ids (contents repeat, as in real traffic: the payloads table sees conflicts). Database
``stoq_bench_driver`` on STOQ_BENCH_PG (default postgresql://postgres@127.0.0.1:5432) is dropped and
recreated. Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg2
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from stoq.rows import KEY_LENGTHS, ROW_COLUMNS, document_rows
from stoq.store import Store, _make_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STOQ_SHARED", ROOT.parent / "shared"))
PG = os.environ.get("STOQ_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
DB = "stoq_bench_driver"


def corpus_documents() -> list[dict[str, Any]]:
    files = sorted(str(p) for p in (SHARED / "corpus").iterdir() if p.is_file() and p.suffix not in (".md", ".json"))
    out = subprocess.run([str(Path(sys.executable).parent / "stoq"), "scan", "--no-store", *files],
                         capture_output=True, check=False).stdout
    return [json.loads(line) for line in out.splitlines()]


def renamed(doc: dict[str, Any]) -> dict[str, Any]:
    ids = {p["payload_id"]: str(uuid.uuid4()) for p in doc["results"]}
    results = [p | {"payload_id": ids[p["payload_id"]], "parent_id": ids.get(p["parent_id"]),
                    "duplicate_of": ids.get(p["duplicate_of"])} for p in doc["results"]]
    errors = [e | {"payload_id": ids[e["payload_id"]]} for e in doc["errors"]]
    return doc | {"scan_id": str(uuid.uuid4()), "results": results, "errors": errors}


def statement(store: Store, rows: tuple[list[tuple[Any, ...]], ...]) -> tuple[str, list[str]]:
    """The query string and parameters ``Store._save_pg`` sends for ``rows``."""
    parts, params = [], []
    for sql, cols, keylen, batch in zip(store._inserts, ROW_COLUMNS, KEY_LENGTHS, rows):
        if batch:
            batch = sorted(batch, key=lambda row: row[:keylen])
            parts.append(sql)
            params.append(orjson.dumps([dict(zip(cols, row)) for row in batch]).decode())
    return "".join(parts), params


def write(driver: str, url: str, store: Store, batches: list[list[dict[str, Any]]]) -> float:
    """Seconds to save every batch (rows built as the store builds them, then sent by ``driver``)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn: Any = psycopg2.connect(dsn) if driver == "psycopg2" else psycopg.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor() if driver == "psycopg2" else psycopg.ClientCursor(conn)  # client-side binding:
    start = time.perf_counter()  # several statements in one query string, as psycopg2 sends them
    for docs in batches:
        sql, params = statement(store, document_rows(docs, sqlite=False))
        cur.execute(sql, params)
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def read(driver: str, url: str, scan_ids: list[str]) -> float:
    engine = _make_engine(make_url(url).set(drivername=f"postgresql+{driver}"))
    store = Store(engine)
    start = time.perf_counter()
    for scan_id in scan_ids:
        assert store.get(scan_id) is not None
    seconds = time.perf_counter() - start
    engine.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    with create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB}"'))
    url = f"{PG}/{DB}"
    upgrade(url)
    store = Store.open(url, auto_migrate=False)
    base = corpus_documents()
    times: dict[str, list[float]] = {"psycopg2 write": [], "psycopg write": [], "psycopg2 read": [], "psycopg read": []}
    for _ in range(args.rounds):
        for driver in ("psycopg2", "psycopg"):
            docs = [renamed(base[i % len(base)]) for i in range(args.docs)]
            batches = [docs[i:i + args.batch] for i in range(0, len(docs), args.batch)]
            times[f"{driver} write"].append(write(driver, url, store, batches))
            times[f"{driver} read"].append(read(driver, url, [d["scan_id"] for d in docs[:args.reads]]))
            for doc in docs[:3]:  # both drivers give back what was saved, exactly
                engine = _make_engine(make_url(url).set(drivername=f"postgresql+{driver}"))
                assert Store(engine).get(doc["scan_id"]) == doc, driver
                engine.dispose()
    store.close()
    report: dict[str, Any] = {"documents": args.docs, "batch": args.batch, "rounds": args.rounds,
                              "reads": args.reads, "corpus_documents": len(base),
                              "psycopg2": psycopg2.__version__.split()[0], "psycopg": psycopg.__version__}
    for key, values in times.items():
        per = args.reads if key.endswith("read") else args.docs
        report[f"{key} us/doc (median)"] = round(statistics.median(values) / per * 1e6, 1)
        report[f"{key} s (all rounds)"] = [round(v, 3) for v in values]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
