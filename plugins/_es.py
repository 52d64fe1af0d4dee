"""Elasticsearch for the ``elasticsearch`` connector: the index templates, the bulk request's
operations and the reading of its answer.

Two indices (``<prefix>-scans``, ``<prefix>-payloads``). A scan document goes to the first under
``_id`` = scan id, its ``results`` kept in ``_source`` but not indexed; each payload goes to the second
under ``_id`` = ``<scan id>:<payload id>``, with its scan's id, date and source and its own errors, so
that an analyst searches children like roots (``sha256:…``, ``workers.yara.matches.rule:…``). Re-sending
a document overwrites it (``index`` operations): idempotent. Plugin output (``workers``), payload
``meta`` and ``source`` are ``flattened`` fields: every leaf is searchable as a keyword, and plugins whose
outputs disagree on a field's type cannot cause a mapping conflict.

The mappings follow ``docs/scan-document.schema.json`` field by field (a test checks that each property
of the schema has one, of the matching type).
"""

from __future__ import annotations

from typing import Any

KEYWORD = {"type": "keyword"}
FLAT = {"type": "flattened"}  # OpenSearch's name for it: flat_object (index_templates swaps it)
NAME = {"type": "keyword", "fields": {"text": {"type": "text"}}}  # exact and full-text

#: A payload of the schema's ``$defs.payload``.
PAYLOAD_PROPERTIES: dict[str, Any] = {
    "payload_id": KEYWORD, "parent_id": KEYWORD, "depth": {"type": "integer"}, "filename": NAME,
    "extracted_by": KEYWORD, "meta": FLAT, "duplicate_of": KEYWORD, "size": {"type": "long"},
    "md5": KEYWORD, "sha1": KEYWORD, "sha256": KEYWORD, "sha512": KEYWORD, "mime": KEYWORD,
    "workers": FLAT, "flags": KEYWORD,
}
#: An entry of the schema's ``$defs.error``.
ERROR_PROPERTIES: dict[str, Any] = {"payload_id": KEYWORD, "plugin": KEYWORD, "kind": KEYWORD,
                                    "message": {"type": "text"}}
#: The scan document's top level.
SCAN_PROPERTIES: dict[str, Any] = {
    "schema_version": KEYWORD, "scan_id": KEYWORD, "date": {"type": "date"}, "source": FLAT,
    "payloads": {"type": "integer"}, "results": {"type": "object", "enabled": False},
    "errors": {"properties": ERROR_PROPERTIES},
}


def index_templates(prefix: str, engine: str = "elasticsearch") -> dict[str, dict[str, Any]]:
    """name -> the body of a composable index template (``PUT _index_template/<name>``); for OpenSearch,
    ``flattened`` becomes ``flat_object``."""
    payload_doc = PAYLOAD_PROPERTIES | {"scan_id": KEYWORD, "date": {"type": "date"}, "source": FLAT,
                                        "errors": {"properties": ERROR_PROPERTIES}}
    flat = {"type": "flat_object"} if engine == "opensearch" else FLAT

    def typed(props: dict[str, Any]) -> dict[str, Any]:
        return {k: flat if v is FLAT else v for k, v in props.items()}

    return {f"{prefix}-{kind}": {"index_patterns": [f"{prefix}-{kind}*"], "priority": 200,
                                 "template": {"mappings": {"dynamic": False, "properties": typed(props)}},
                                 "_meta": {"created_by": "stoq", "schema": "scan-document 1.x"}}
            for kind, props in (("scans", SCAN_PROPERTIES), ("payloads", payload_doc))}


class SearchClient:
    """The official client of Elasticsearch (``elasticsearch`` 9) or of OpenSearch (``opensearch-py``),
    behind the two calls the connector makes. The clients' own retries are off: the framework retries."""

    def __init__(self, engine: str, url: str, timeout: float, ca_certs: str | None, api_key: str | None,
                 username: str | None, password: str | None) -> None:
        self.engine = engine
        auth = (username, password or "") if username else None
        if engine == "opensearch":
            from opensearchpy import OpenSearch

            if api_key:
                raise ValueError("elasticsearch.api_key is an Elasticsearch option: use username and password with OpenSearch")
            self.client: Any = OpenSearch(hosts=[url], http_auth=auth, timeout=timeout, max_retries=0,
                                          retry_on_timeout=False, ca_certs=ca_certs)
        else:
            from elasticsearch import Elasticsearch

            extra: dict[str, Any] = {"api_key": api_key} if api_key else {"basic_auth": auth} if auth else {}
            self.client = Elasticsearch(url, request_timeout=timeout, max_retries=0, retry_on_timeout=False,
                                        ca_certs=ca_certs, **extra)

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        if self.engine == "opensearch":
            self.client.indices.put_index_template(name=name, body=body)
        else:
            self.client.indices.put_index_template(name=name, **body)

    def bulk(self, operations: list[dict[str, Any]]) -> dict[str, Any]:
        if self.engine == "opensearch":
            return dict(self.client.bulk(body=operations))
        return dict(self.client.bulk(operations=operations).body)

    def close(self) -> None:
        self.client.close()


def bulk_operations(docs: list[dict[str, Any]], prefix: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The bulk request's operations (action, source, action, source...) and, per action, its scan id."""
    ops: list[dict[str, Any]] = []
    owners: list[str] = []
    for doc in docs:
        scan_id = doc["scan_id"]
        ops += [{"index": {"_index": f"{prefix}-scans", "_id": scan_id}}, doc]
        owners.append(scan_id)
        errors: dict[str, list[dict[str, Any]]] = {}
        for e in doc["errors"]:
            errors.setdefault(e["payload_id"], []).append(e)
        for p in doc["results"]:
            ops += [{"index": {"_index": f"{prefix}-payloads", "_id": f"{scan_id}:{p['payload_id']}"}},
                    p | {"scan_id": scan_id, "date": doc["date"], "source": doc["source"],
                         "errors": errors.get(p["payload_id"], [])}]
            owners.append(scan_id)
    return ops, owners


def failed_scans(response: dict[str, Any], owners: list[str]) -> dict[str, str]:
    """Scan id -> the first failure (``<status> <error type>: <reason>``) of each scan with a failed item
    (a 429 or 5xx is worth a retry; a 400 is the document's fault and is reported the same way)."""
    failed: dict[str, str] = {}
    if not response.get("errors"):
        return failed
    for item, scan_id in zip(response.get("items", []), owners):
        result = next(iter(item.values()), {})
        status = int(result.get("status", 0))
        if status >= 300 and scan_id not in failed:
            err = result.get("error") or {}
            reason = f"{err.get('type', '?')}: {err.get('reason', '')}" if isinstance(err, dict) else str(err)
            failed[scan_id] = f"{status} {reason}"
    return failed
