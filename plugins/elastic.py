"""The ``elasticsearch`` connector: scan and payload documents indexed through the bulk API of
Elasticsearch or OpenSearch."""

from __future__ import annotations

from typing import Any, Iterable, Literal

from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin, Extra, PartialDelivery
from stoq_plugins._es import SearchClient, bulk_operations, failed_scans, index_templates


class ElasticsearchConnector(ConnectorPlugin):
    """Indexes every finished document with the official client (Elasticsearch's, or OpenSearch's with
    ``engine=opensearch``): the scan in ``<prefix>-scans`` (``_id`` scan id), each payload in
    ``<prefix>-payloads`` (``_id`` scan id:payload id), in one bulk request per batch, after putting
    the index templates (once per process).

    Re-sending overwrites (idempotent by id). Items refused by the bulk API (429, 5xx, 400) are raised
    as a ``PartialDelivery`` naming their scans; the others are in.
    """

    name = "elasticsearch"
    version = "1.0"
    extras = (Extra("elasticsearch", "pip install 'stoq-analysis[elasticsearch]'", "cannot reach Elasticsearch"),
              Extra("opensearchpy", "pip install 'stoq-analysis[opensearch]'", "cannot reach OpenSearch (engine=opensearch)"))

    class Options(ConnectorOptions):
        """The cluster and the indices."""

        url: str | None = Field(None, description="The cluster's URL, e.g. https://es:9200 (required).")
        engine: Literal["elasticsearch", "opensearch"] = Field("elasticsearch", description="Which server, so which client: elasticsearch (9.x) or opensearch (opensearch-py).")
        index_prefix: str = Field("stoq", pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Indices <prefix>-scans and <prefix>-payloads.")
        api_key: str | None = Field(None, description="An API key (base64 id:key; Elasticsearch only).", json_schema_extra={"secret": True})
        username: str | None = Field(None, description="Basic authentication user.")
        password: str | None = Field(None, description="Basic authentication password.", json_schema_extra={"secret": True})
        ca_certs: str | None = Field(None, description="CA bundle to verify the server's certificate.")
        timeout: float = Field(30.0, gt=0, description="Seconds per request.")
        templates: bool = Field(True, description="Put the index templates before the first bulk request.")

    def setup(self) -> None:
        o = self.options
        if not o.url:
            raise ValueError("elasticsearch.url is not set (-o elasticsearch.url=https://es:9200)")
        self.client = SearchClient(o.engine, o.url, o.timeout, o.ca_certs, o.api_key, o.username, o.password)
        self.templates_put = not o.templates

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        docs = list(documents)
        if not self.templates_put:
            for name, body in index_templates(self.options.index_prefix, self.options.engine).items():
                self.client.put_template(name, body)
            self.templates_put = True
        ops, owners = bulk_operations(docs, self.options.index_prefix)
        failed = failed_scans(self.client.bulk(ops), owners)
        if failed:
            first = next(iter(failed.items()))
            raise PartialDelivery(f"the bulk API refused items of {len(failed)} scan(s) (first: {first[0]}: {first[1]})",
                                  failed)

    def close(self) -> None:
        self.client.close()
