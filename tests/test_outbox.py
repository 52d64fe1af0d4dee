"""The connector outbox on both stores (SQLite, and PostgreSQL in a schema of its own): defer with
backoff, claims that two catch-ups do not share, and a catch-up that rebuilds the connector from the
stored options plus the configuration's secrets. Run under the services lock (PostgreSQL)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from test_store import db_url, pg_url, small_document, store  # noqa: F401  (fixtures)

from stoq.config import load_settings
from stoq.outbox import LEASE, Outbox, backoff, catch_up
from stoq_plugins.file import FileConnector


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4, 8, 20)] == [5, 10, 20, 40, 600, 600]  # 5 * 2**7 = 640 is over the cap


def test_defer_claim_and_mark(store: Any) -> None:
    box = Outbox(store)
    box.defer("file", '{"directory": "/x"}', ["s1", "s2"], "OSError: disk full", now=1000.0)
    box.defer("file", '{"directory": "/x"}', ["s2"], "OSError: still full", now=1010.0)
    rows = {r["scan_id"]: r for r in box.rows()}
    assert {k: (r["state"], r["attempts"], r["next_try"], r["last_error"]) for k, r in rows.items()} == {
        "s1": ("pending", 1, 1005.0, "OSError: disk full"), "s2": ("pending", 2, 1020.0, "OSError: still full")}
    assert box.claim(due_by=1004.0) == []
    first = box.claim(due_by=1030.0)
    assert first == [("file", "s1", '{"directory": "/x"}'), ("file", "s2", '{"directory": "/x"}')]
    assert box.claim(due_by=1030.0) == []  # leased: another catch-up leaves them alone
    assert all(r["next_try"] > time.time() + LEASE - 60 for r in box.rows())  # leased from the real clock
    assert box.claim(["jsonl"], due_by=float("inf")) == [] and box.claim([], due_by=float("inf")) == []
    box.mark("file", ["s1"], "delivered")
    assert [(r["scan_id"], r["state"], r["next_try"]) for r in box.rows()][0] == ("s1", "delivered", None)
    assert box.pending_count() == 1 and box.pending_count(["jsonl"]) == 0


def test_catch_up_rebuilds_the_connector_and_delivers_from_the_store(store: Any, tmp_path: Path) -> None:
    docs = [small_document(i) for i in range(3)]
    store.save(docs[:2])  # the third is not in the store: its row becomes "missing"
    out = tmp_path / "out"
    connector = FileConnector(FileConnector.Options(directory=out))
    from stoq.connectors import stored_options

    options = stored_options(connector)
    assert json.loads(options) == {"max_tlp": "red", "directory": str(out), "layout": "document", "indent": False}
    Outbox(store).defer("file", options, [d["scan_id"] for d in docs], "OSError", now=0.0)
    result = catch_up(store, load_settings(None, env={}))
    assert (result.delivered, result.missing, result.failed, result.errors) == ({"file": 2}, {"file": 1}, {}, [])
    assert sorted(p.stem for p in out.rglob("*.json")) == sorted(d["scan_id"] for d in docs[:2])
    for doc in docs[:2]:
        assert json.loads(next(out.rglob(f"{doc['scan_id']}.json")).read_bytes()) == store.get(doc["scan_id"])
    assert sorted((r["scan_id"], r["state"]) for r in Outbox(store).rows()) == sorted(
        [(docs[0]["scan_id"], "delivered"), (docs[1]["scan_id"], "delivered"), (docs[2]["scan_id"], "missing")])


def test_secret_options_are_not_stored() -> None:
    from stoq.connectors import stored_options
    from stoq_plugins.queueconn import QueueConnector

    plugin = QueueConnector(QueueConnector.Options(url="amqp://user:s3cret@rabbit//"))
    assert "s3cret" not in stored_options(plugin) and "url" not in json.loads(stored_options(plugin))


@pytest.mark.parametrize("broken", ["unknown", "nopath"])
def test_a_connector_that_cannot_start_keeps_its_rows(store: Any, broken: str) -> None:
    store.save([small_document(1)])
    name, options = ("nosuch", "{}") if broken == "unknown" else ("file", "{}")
    Outbox(store).defer(name, options, [small_document(1)["scan_id"]], "x", now=0.0)
    result = catch_up(store, load_settings(None, env={}))
    assert result.failed == {name: 1} and "cannot start" in result.errors[0]
    (row,) = Outbox(store).rows()
    assert (row["state"], row["attempts"]) == ("pending", 2)
