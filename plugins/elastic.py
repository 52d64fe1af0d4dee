"""The ``elasticsearch`` connector: scan and payload documents indexed through the bulk API."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin, Extra, PartialDelivery
from stoq_plugins._es import bulk_operations, failed_scans, index_templates


class ElasticsearchConnector(ConnectorPlugin):
    """Indexes every finished document in Elasticsearch with the official client: the scan in
    ``<prefix>-scans`` (``_id`` scan id), each payload in ``<prefix>-payloads`` (``_id`` scan id:payload
    id), in one bulk request per batch, after putting the index templates (once per process).

    Re-sending overwrites (idempotent by id). Items refused by the bulk API (429, 5xx, 400) are raised
    as a ``PartialDelivery`` naming their scans; the others are in.
    """

    name = "elasticsearch"
    version = "1.0"
    extras = (Extra("elasticsearch", "pip install 'stoq-analysis[elasticsearch]'", "cannot start"),)

    class Options(ConnectorOptions):
        """The cluster and the indices."""

        url: str | None = Field(None, description="Elasticsearch URL, e.g. https://es:9200 (required).")
        index_prefix: str = Field("stoq", pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Indices <prefix>-scans and <prefix>-payloads.")
        api_key: str | None = Field(None, description="An API key (base64 id:key).", json_schema_extra={"secret": True})
        username: str | None = Field(None, description="Basic authentication user.")
        password: str | None = Field(None, description="Basic authentication password.", json_schema_extra={"secret": True})
        ca_certs: str | None = Field(None, description="CA bundle to verify the server's certificate.")
        timeout: float = Field(30.0, gt=0, description="Seconds per request.")
        templates: bool = Field(True, description="Put the index templates before the first bulk request.")

    def setup(self) -> None:
        if not self.options.url:
            raise ValueError("elasticsearch.url is not set (-o elasticsearch.url=https://es:9200)")
        from elasticsearch import Elasticsearch

        o = self.options
        auth: dict[str, Any] = {}
        if o.api_key:
            auth["api_key"] = o.api_key
        elif o.username:
            auth["basic_auth"] = (o.username, o.password or "")
        # No retries in the client: the framework retries, with backoff, and keeps what it could not send.
        self.client = Elasticsearch(o.url, request_timeout=o.timeout, max_retries=0, retry_on_timeout=False,
                                    ca_certs=o.ca_certs, **auth)
        self.templates_put = not o.templates

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        docs = list(documents)
        if not self.templates_put:
            for name, body in index_templates(self.options.index_prefix).items():
                self.client.indices.put_index_template(name=name, **body)
            self.templates_put = True
        ops, owners = bulk_operations(docs, self.options.index_prefix)
        failed = failed_scans(self.client.bulk(operations=ops).body, owners)
        if failed:
            first = next(iter(failed.items()))
            raise PartialDelivery(f"the bulk API refused items of {len(failed)} scan(s) (first: {first[0]}: {first[1]})",
                                  failed)

    def close(self) -> None:
        self.client.close()
