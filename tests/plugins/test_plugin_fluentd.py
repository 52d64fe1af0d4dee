"""The ``fluentd`` connector against a forward-protocol receiver started here (tests/fake_services.py:
msgpack over TCP, decoded with msgpack): the exact events, and an outage caught up from the outbox."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from fake_services import FakeFluentd
from helpers import CORPUS

from stoq.plugin import PartialDelivery
from stoq_plugins.fluentd import FluentdConnector


def wait_for(events: list[Any], n: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while len(events) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(events)


def doc(scan_id: str) -> dict[str, Any]:
    return {"scan_id": scan_id, "date": "2026-12-06T06:00:01.5Z", "source": {"path": "/x"}, "results": [],
            "errors": [], "nested": {"list": [1, "two", None, 3.5]}}


def test_each_document_is_one_event(tmp_path: Path) -> None:
    fluent = FakeFluentd().start()
    try:
        plugin = FluentdConnector(FluentdConnector.Options(port=fluent.port, tag="lab"))
        plugin.setup()
        plugin.save([doc("a"), doc("b")])
        when = 1796536801  # 2026-12-06T06:00:01Z (date -u -d ... +%s)
        assert wait_for(fluent.events, 2) == [("lab.scan", when, doc("a")), ("lab.scan", when, doc("b"))]
        plugin.close()
    finally:
        fluent.stop()


def test_a_receiver_that_is_away_fails_the_batch_and_nothing_is_resent_by_the_library() -> None:
    fluent = FakeFluentd()
    plugin = FluentdConnector(FluentdConnector.Options(port=fluent.port, timeout=1))
    plugin.setup()
    try:
        plugin.save([doc("a"), doc("b")])
        raise AssertionError("no error")
    except PartialDelivery as exc:
        assert exc.failed == ["a", "b"] and "ConnectionRefusedError" in str(exc)
    fluent.start()
    try:
        plugin.save([doc("c")])
        assert wait_for(fluent.events, 1) == [("stoq.scan", 1796536801, doc("c"))]
        time.sleep(0.2)
        assert len(fluent.events) == 1  # "a" and "b" were not kept and sent behind "c"
    finally:
        plugin.close()
        fluent.stop()


def test_an_outage_during_a_scan_is_caught_up_from_the_outbox(run_stoq: Any) -> None:
    fluent = FakeFluentd()
    files = [CORPUS / "test.txt", CORPUS / "test.zip", CORPUS / "test.html"]
    proc = run_stoq("scan", *map(str, files), "--connectors", "fluentd", "-o", f"fluentd.port={fluent.port}",
                    "-o", "fluentd.timeout=1")
    assert proc.returncode == 5, proc.stderr
    docs = {d["scan_id"]: d for d in map(json.loads, proc.stdout.splitlines())}
    fluent.start()
    try:
        proc = run_stoq("connectors", "catch-up", "--now")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["delivered"] == {"fluentd": len(files)}
        events = wait_for(fluent.events, len(files))
        assert sorted(r["scan_id"] for _, _, r in events) == sorted(docs)  # each scan once
        for tag, when, record in events:
            assert tag == "stoq.scan" and record == docs[record["scan_id"]]
            assert when == int(datetime.fromisoformat(record["date"].replace("Z", "+00:00")).timestamp())
    finally:
        fluent.stop()
