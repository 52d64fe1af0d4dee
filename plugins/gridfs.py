"""The ``gridfs`` archiver: payloads in MongoDB's GridFS, named by sha256 (original stoQ's ``-A mongodb``)."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field

from stoq.model import SHA256
from stoq.plugin import ArchiveDamaged, ArchiveError, ArchiverPlugin, Extra, PluginOptions
from stoq_plugins import _mongo


class GridfsArchiver(ArchiverPlugin):
    """Stores payloads as GridFS files of a MongoDB database, each named by its sha256.

    ``archive`` is ``mongodb://[user:password@]host[:port]/database``. A payload is one file of the
    bucket (``fs.files`` and ``fs.chunks`` by default, as ``mongofiles`` reads them), ``filename`` its
    sha256 and ``metadata`` its sha256 and size. A put of a stored payload writes nothing; two writers
    racing on a new one may leave two copies of the same bytes, both valid (GridFS gives each upload
    an id of its own: a fixed id would let the loser's clean-up delete the winner's chunks). A get
    reads the newest copy and, with ``verify``, hashes it.
    """

    name = "gridfs"
    version = "1.0"
    extras = (Extra("pymongo", "stoq-analysis[mongodb]", "the gridfs archiver cannot start"),)

    class Options(PluginOptions):
        """The GridFS bucket and how long to wait for the server."""

        bucket: str = Field("fs", description="GridFS bucket: collections <bucket>.files and <bucket>.chunks.")
        database: str = Field("stoq", description="Database when the URL names none.")
        chunk_size: int = Field(255 * 1024, ge=1024, le=15 << 20, description="Bytes per GridFS chunk.")
        timeout_ms: int = Field(10_000, ge=100, description="Milliseconds to find the server (and to connect) before a call fails.")

    def __init__(self, location: str = "", options: PluginOptions | None = None) -> None:
        super().__init__(location, options)
        self.display = _mongo.shown(str(location))
        self._client = _mongo.Client(str(location), self.options.timeout_ms)

    def _bucket(self) -> tuple[Any, Any]:
        if not str(self.location).startswith(("mongodb://", "mongodb+srv://")):
            raise ArchiveError("archiver gridfs needs the setting archive (STOQ_ARCHIVE) to be a mongodb:// URL, "
                               f"not {self.display!r}")
        db = self._client.database(self.options.database)  # an ArchiveError without pymongo
        import gridfs

        return gridfs.GridFSBucket(db, self.options.bucket, chunk_size_bytes=self.options.chunk_size), db[f"{self.options.bucket}.files"]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return _mongo.archive_call(str(self.location), what, fn, *args, **kwargs)

    def prepare(self) -> None:
        _, files = self._bucket()
        self._call("cannot open the database", files.database.command, "ping")
        self._call("cannot create the index", files.create_index, [("filename", 1), ("uploadDate", 1)])
        self._client.close()  # before workers fork: each opens its own

    def exists(self, sha256: str) -> bool:
        _, files = self._bucket()
        return self._call(f"cannot look up payload {sha256}", files.find_one, {"filename": _checked(sha256)},
                          {"_id": 1}) is not None

    def put(self, sha256: str, content: bytes) -> None:
        if self.exists(sha256):
            return
        bucket, _ = self._bucket()
        self._call(f"cannot store payload {sha256}", bucket.upload_from_stream, sha256, content,
                   metadata={"sha256": sha256, "size": len(content)})

    def get(self, sha256: str, verify: bool = True) -> bytes:
        from gridfs.errors import CorruptGridFile, NoFile

        bucket, _ = self._bucket()
        what = f"cannot read payload {sha256}"
        try:
            content: bytes = self._call(what, lambda: bucket.open_download_stream_by_name(_checked(sha256)).read())
        except ArchiveError as exc:
            if isinstance(exc.__cause__, NoFile):
                raise ArchiveError(f"payload {sha256} is not in the archive {self.display}") from exc
            if isinstance(exc.__cause__, CorruptGridFile):
                raise ArchiveDamaged(f"payload {sha256} is damaged in the archive {self.display}: {exc.__cause__}") from exc
            raise
        if verify and hashlib.sha256(content).hexdigest() != sha256:
            raise ArchiveDamaged(f"payload {sha256} is damaged in the archive {self.display}: its bytes are not that payload's")
        return content

    def delete(self, sha256: str) -> None:
        bucket, files = self._bucket()
        for doc in self._call(f"cannot delete payload {sha256}", lambda: list(files.find({"filename": _checked(sha256)}, {"_id": 1}))):
            self._call(f"cannot delete payload {sha256}", bucket.delete, doc["_id"])

    def close(self) -> None:
        self._client.close()


def _checked(sha256: str) -> str:
    if not SHA256.fullmatch(sha256):
        raise ArchiveError(f"not a sha256: {sha256!r}")
    return sha256
