"""The SQL of docs/queries.md, run verbatim (read from the page) on SQLite and PostgreSQL, against a
store filled by real scans of corpus files; every expected row is computed from the documents the
scans printed."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterator

import pytest
from sqlalchemy import create_engine, text

from helpers import ROOT
from test_cli_results_search import Filled, filled_store, yara_rules

PAGE = (ROOT / "docs" / "queries.md").read_text()
QUERIES = dict(re.findall(r"<!-- query: ([a-z-]+) -->\n```sql\n(.*?)```", PAGE, re.S))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Filled, Any]]:
    store = filled_store(request.param, tmp_path_factory)  # the scans test_cli_results_search.py searches
    engine = create_engine(store.env["STOQ_DATABASE_URL"])
    try:
        yield request.param, store, engine
    finally:
        engine.dispose()


def run(engine: Any, name: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(QUERIES[name]), params)]


def test_the_page_has_every_query() -> None:
    assert sorted(QUERIES) == ["ancestors", "child-of", "descendants", "flags-postgresql", "flags-sqlite",
                               "parents-of", "yara-postgresql", "yara-sqlite"]


def invoice(store: Filled) -> dict[str, Any]:
    return next(d for d in store.docs if d["source"]["path"].endswith("invoice.zip"))


def test_descendants_and_ancestors(filled: tuple[str, Filled, Any]) -> None:
    _, store, engine = filled
    doc = invoice(store)
    results = doc["results"]
    by_id = {p["payload_id"]: p for p in results}

    def levels(p: dict[str, Any], top: str) -> int | None:
        n = 0
        while p["parent_id"] is not None:
            n += 1
            if p["parent_id"] == top:
                return n
            p = by_id[p["parent_id"]]
        return None

    for top in results:
        expected = [(p["payload_id"], levels(p, top["payload_id"]), p["filename"], p["sha256"])
                    for p in results if levels(p, top["payload_id"]) is not None]
        got = run(engine, "descendants", scan_id=doc["scan_id"], payload_id=top["payload_id"])
        assert got == expected, top["filename"]
    root = results[0]
    assert len(run(engine, "descendants", scan_id=doc["scan_id"], payload_id=root["payload_id"])) == len(results) - 1

    deepest = max(results, key=lambda p: p["depth"])
    chain, p = [], deepest
    while True:
        chain.append((p["payload_id"], p["filename"], p["sha256"]))
        if p["parent_id"] is None:
            break
        p = by_id[p["parent_id"]]
    assert run(engine, "ancestors", scan_id=doc["scan_id"], payload_id=deepest["payload_id"]) == chain
    assert len(chain) == deepest["depth"] + 1 >= 3


def test_scans_where_a_content_was_a_child(filled: tuple[str, Filled, Any]) -> None:
    _, store, engine = filled
    readme = next(p for p in invoice(store)["results"] if p["filename"] == "readme.txt")
    sha = readme["sha256"]
    expected = []
    for doc in sorted(store.docs, key=lambda d: (d["date"], d["scan_id"])):
        for p in doc["results"]:
            if p["sha256"] == sha and p["parent_id"] is not None:
                expected.append((doc["scan_id"], doc["date"], doc["results"][0]["filename"], p["payload_id"],
                                 p["filename"], p["depth"]))
    got = run(engine, "child-of", sha256=sha)
    assert got == expected
    # the sample zip was scanned twice and holds the content twice (readme.txt and notes.txt in notes.txt.gz);
    # the copy scanned as a root of its own is not listed
    assert len({row[0] for row in got}) == 2 and len(got) == 4
    assert any(d["results"][0]["sha256"] == sha for d in store.docs)

    parents: Counter[tuple[str, str | None]] = Counter()
    for doc in store.docs:
        ids = {p["payload_id"]: p for p in doc["results"]}
        for p in doc["results"]:
            if p["sha256"] == sha and p["parent_id"] is not None:
                parent = ids[p["parent_id"]]
                parents[(parent["sha256"], parent["filename"])] += 1
    assert run(engine, "parents-of", sha256=sha) == [(s, f, n) for (s, f), n in sorted(parents.items())]


def test_yara_matches_and_flag_counts(filled: tuple[str, Filled, Any]) -> None:
    dialect, store, engine = filled
    for rule in ("demo_invoice_lure", "demo_encoded_powershell", "mz_header"):
        expected = [(d["scan_id"], p["payload_id"], p["filename"])
                    for d in sorted(store.docs, key=lambda d: (d["date"], d["scan_id"]), reverse=True)
                    for p in d["results"] if rule in yara_rules(p)]
        assert expected, rule
        assert run(engine, f"yara-{dialect}", rule=rule) == expected
    flags = Counter(f for d in store.docs for p in d["results"] for f in p["flags"])
    assert flags["limit:depth"] and flags["basicworker:empty"]
    assert run(engine, f"flags-{dialect}") == sorted(flags.items())
