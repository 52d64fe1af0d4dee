"""The ``mongodb`` connector: one MongoDB document per scan, payloads as an array, indexed by sha256."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import Field

from stoq.plugin import ConnectorPlugin, Extra, PluginOptions
from stoq_plugins import _mongo


class MongodbConnector(ConnectorPlugin):
    """Upserts every finished document into a MongoDB collection, one per scan, indexed by payload sha256.

    The document is the scan document as stoq stores it (``docs/results.md``), its ``_id`` the scan id:
    a document delivered twice (a retried batch) replaces itself, so delivery is idempotent. Payloads
    stay the ``results`` array; an index on ``results.sha256`` finds every scan holding a file.
    """

    name = "mongodb"
    version = "1.0"
    extras = (Extra("pymongo", "stoq-analysis[mongodb]", "the mongodb connector cannot start"),)

    class Options(PluginOptions):
        """Where the documents go."""

        url: str = Field("", description="MongoDB URL, mongodb://[user:password@]host[:port][/database] (required).")
        database: str = Field("stoq", description="Database when the URL names none.")
        collection: str = Field("scans", description="Collection of the scan documents.")
        timeout_ms: int = Field(10_000, ge=100, description="Milliseconds to find the server (and to connect) before a batch fails.")

    def setup(self) -> None:
        if not self.options.url:
            raise ValueError("mongodb.url is not set (-o mongodb.url=mongodb://db:27017/stoq)")
        _mongo.need_pymongo()
        self._client = _mongo.Client(self.options.url, self.options.timeout_ms)
        self._indexed = False

    def _collection(self) -> Any:
        collection = self._client.database(self.options.database)[self.options.collection]
        if not self._indexed:
            collection.create_index("results.sha256", name="results_sha256")
            self._indexed = True
        return collection

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        from pymongo import ReplaceOne

        requests = [ReplaceOne({"_id": doc["scan_id"]}, _mongo.bson_safe(doc) | {"_id": doc["scan_id"]}, upsert=True)
                    for doc in documents]
        if requests:
            self._collection().bulk_write(requests, ordered=False)
