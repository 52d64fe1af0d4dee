"""The ``elasticsearch`` connector against a local HTTP server that answers the bulk and index-template
APIs as Elastic documents them (tests/fake_services.py): the exact requests, partial failures, and an
outage during a scan caught up from the store's outbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fake_services import FakeElasticsearch
from helpers import CORPUS, ROOT

from stoq.plugin import PartialDelivery
from stoq_plugins.elastic import ElasticsearchConnector

SCHEMA = json.loads((ROOT / "docs" / "scan-document.schema.json").read_text())


def document(scan_id: str, payloads: int = 2, tlp: str | None = None) -> dict[str, Any]:
    """A scan document: a root and ``payloads - 1`` children, an error on the last payload."""
    results = [{"payload_id": f"{scan_id}-p{i}", "parent_id": None if i == 0 else f"{scan_id}-p0", "depth": min(i, 1),
                "filename": f"f{i}.bin", "extracted_by": None if i == 0 else "decompress", "meta": {},
                "duplicate_of": None, "size": i, "md5": "0" * 32, "sha1": "1" * 40, "sha256": f"{i:064x}",
                "sha512": "2" * 128, "mime": "application/octet-stream",
                "workers": {"yara": {"matches": [{"rule": "r"}]}}, "flags": []} for i in range(payloads)]
    source: dict[str, Any] = {"path": f"/in/{scan_id}"} | ({"meta": {"tlp": tlp}} if tlp else {})
    return {"schema_version": "1.1", "scan_id": scan_id, "date": "2026-12-06T06:00:00.000001Z", "source": source,
            "payloads": payloads, "results": results,
            "errors": [{"payload_id": results[-1]["payload_id"], "plugin": "yara", "kind": "error", "message": "m"}]}


def expected_lines(doc: dict[str, Any], prefix: str = "stoq") -> list[dict[str, Any]]:
    """The NDJSON lines of a document as the connector's page specifies them."""
    lines: list[dict[str, Any]] = [{"index": {"_index": f"{prefix}-scans", "_id": doc["scan_id"]}}, doc]
    for p in doc["results"]:
        lines.append({"index": {"_index": f"{prefix}-payloads", "_id": f"{doc['scan_id']}:{p['payload_id']}"}})
        lines.append(dict(p, scan_id=doc["scan_id"], date=doc["date"], source=doc["source"],
                          errors=[e for e in doc["errors"] if e["payload_id"] == p["payload_id"]]))
    return lines


@pytest.fixture
def es() -> Any:
    fake = FakeElasticsearch().start()
    yield fake
    fake.stop()


def connector(url: str, **options: Any) -> ElasticsearchConnector:
    plugin = ElasticsearchConnector(ElasticsearchConnector.Options(url=url, **options))
    plugin.setup()
    return plugin


def test_templates_then_one_bulk_request_of_scans_and_payloads(es: FakeElasticsearch) -> None:
    docs = [document("a"), document("b", payloads=3)]
    connector(es.url).save(docs)
    methods_paths = [(m, p.split("?")[0]) for m, p, _ in es.requests]
    assert methods_paths == [("PUT", "/_index_template/stoq-scans"), ("PUT", "/_index_template/stoq-payloads"),
                             ("PUT", "/_bulk")]
    bulk = es.requests[2][2]
    assert bulk.endswith(b"\n")
    assert [json.loads(line) for line in bulk.splitlines()] == expected_lines(docs[0]) + expected_lines(docs[1])
    templates = [json.loads(body) for _, _, body in es.requests[:2]]
    assert [t["index_patterns"] for t in templates] == [["stoq-scans*"], ["stoq-payloads*"]]
    # Sent again: the same ids, overwritten (idempotent), and no second template request.
    connector_again = connector(es.url, templates=False)
    connector_again.save(docs[:1])
    assert len(es.indexed) == 2 + 5 and es.writes.count("stoq-scans/a") == 2


def test_the_templates_match_the_json_schema(es: FakeElasticsearch) -> None:
    connector(es.url, index_prefix="cases").save([document("a")])
    scans, payloads = (json.loads(body)["template"]["mappings"]["properties"] for _, _, body in es.requests[:2])
    defs = SCHEMA["$defs"]
    assert set(scans) == set(SCHEMA["properties"])
    assert set(payloads) == set(defs["payload"]["properties"]) | {"scan_id", "date", "source", "errors"}
    assert set(scans["errors"]["properties"]) == set(defs["error"]["properties"])
    # Each JSON type of the schema has the mapping type that holds it.
    wanted = {"integer": {"integer", "long"}, "object": {"flattened"}, "array": {"keyword"}}
    for name, spec in defs["payload"]["properties"].items():
        kind = spec.get("type")
        if kind in wanted:
            assert payloads[name]["type"] in wanted[kind], name
        elif name in ("md5", "sha1", "sha256", "sha512", "payload_id", "parent_id", "duplicate_of", "extracted_by", "mime"):
            assert payloads[name]["type"] == "keyword", name
    assert payloads["filename"] == {"type": "keyword", "fields": {"text": {"type": "text"}}}
    assert scans["date"] == payloads["date"] == {"type": "date"} and scans["results"]["enabled"] is False


@pytest.mark.parametrize("status", [429, 500])
def test_refused_items_name_their_scans(es: FakeElasticsearch, status: int) -> None:
    es.fail = {"b:b-p1": status}
    with pytest.raises(PartialDelivery) as caught:
        connector(es.url).save([document("a"), document("b"), document("c")])
    assert caught.value.failed == ["b"]
    assert "stoq-payloads/b:b-p0" in es.indexed and "stoq-payloads/b:b-p1" not in es.indexed
    assert {"stoq-scans/a", "stoq-scans/c"} <= set(es.indexed)


def test_an_outage_during_a_scan_is_caught_up_from_the_outbox(run_stoq: Any, tmp_path: Path) -> None:
    """The server is down for a whole scan of N files: the scan succeeds, its file connector gets every
    document, the elasticsearch connector's are kept in the outbox (exit code 5); the server comes back,
    `stoq connectors catch-up` delivers each scan, and nothing is left pending."""
    es = FakeElasticsearch()  # a port with nobody listening: the outage
    files = [CORPUS / "test.txt", CORPUS / "test.zip", CORPUS / "test.gz", CORPUS / "test.html"]
    out = tmp_path / "files"
    proc = run_stoq("scan", *map(str, files), "--connectors", "elasticsearch,file", "-o", f"elasticsearch.url={es.url}",
                    "-o", f"file.directory={out}", "-o", "elasticsearch.timeout=2")
    assert proc.returncode == 5, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    ids = sorted(d["scan_id"] for d in docs)
    assert sorted(p.stem for p in out.rglob("*.json")) == ids  # the other connector was not held up
    assert f"connector 'elasticsearch': {len(files)} document(s) kept in the outbox".encode() in proc.stderr
    status = [json.loads(line) for line in run_stoq("connectors", "status").stdout.splitlines()]
    assert sorted(r["scan_id"] for r in status) == ids and {(r["connector"], r["state"], r["attempts"]) for r in status} == {
        ("elasticsearch", "pending", 1)}
    # Still down: a catch-up fails, keeps them, counts the attempt.
    proc = run_stoq("connectors", "catch-up", "--now")
    assert proc.returncode == 5 and json.loads(proc.stdout)["pending"] == len(files)
    es.start()
    try:
        proc = run_stoq("connectors", "catch-up", "--now")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"delivered": {"elasticsearch": len(files)}, "withheld": {}, "missing": {},
                                           "failed": {}, "pending": 0}
        delivered = [key.split("/", 1)[1] for key in es.writes if key.startswith("stoq-scans/")]
        assert sorted(delivered) == ids  # every scan at least once, and here exactly once
        for doc in docs:
            assert es.indexed[f"stoq-scans/{doc['scan_id']}"] == doc
            for p in doc["results"]:
                assert es.indexed[f"stoq-payloads/{doc['scan_id']}:{p['payload_id']}"]["sha256"] == p["sha256"]
        status = [json.loads(line) for line in run_stoq("connectors", "status").stdout.splitlines()]
        assert {(r["state"], r["attempts"]) for r in status} == {("delivered", 2)}
    finally:
        es.stop()


def test_tlp_red_documents_never_reach_a_connector_configured_lower(es: FakeElasticsearch) -> None:
    docs = [document("none"), document("clear", tlp="clear"), document("white", tlp="WHITE"),
            document("amber", tlp="amber"), document("strict", tlp="amber+strict"), document("red", tlp="TLP:RED"),
            document("odd", tlp="purple")]
    from stoq.connectors import deliver_each

    (out,) = deliver_each([connector(es.url, max_tlp="amber")], docs)
    assert out.sent == ["none", "clear", "white", "amber"] and out.withheld == ["strict", "red", "odd"]
    assert sorted(k.split("/")[1] for k in es.indexed if k.startswith("stoq-scans/")) == ["amber", "clear", "none", "white"]


def test_opensearch_engine_same_requests_with_flat_object(es: FakeElasticsearch) -> None:
    """engine=opensearch: opensearch-py sends the same templates (flattened fields as OpenSearch's
    flat_object) and the same bulk lines; refused items are read the same way."""
    docs = [document("a"), document("b", payloads=3)]
    plugin = connector(es.url, engine="opensearch")
    plugin.save(docs)
    assert [(m, p.split("?")[0]) for m, p, _ in es.requests] == [
        ("PUT", "/_index_template/stoq-scans"), ("PUT", "/_index_template/stoq-payloads"), ("POST", "/_bulk")]
    assert [json.loads(line) for line in es.requests[2][2].splitlines()] == expected_lines(docs[0]) + expected_lines(docs[1])
    scans, payloads = (json.loads(body)["template"]["mappings"]["properties"] for _, _, body in es.requests[:2])
    assert scans["source"] == payloads["workers"] == payloads["meta"] == {"type": "flat_object"}
    es.fail = {"a:a-p0": 429}
    with pytest.raises(PartialDelivery) as caught:
        plugin.save(docs)
    assert caught.value.failed == ["a"]

