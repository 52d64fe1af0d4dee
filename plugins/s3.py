"""The ``s3`` archiver: payloads as objects of an S3 bucket (AWS S3, MinIO, Ceph...), keyed by sha256."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from stoq.plugin import ArchiveDamaged, ArchiveError, ArchiverPlugin, Extra, Location, PluginOptions
from stoq_plugins import _s3


class S3Archiver(ArchiverPlugin):
    """Stores payloads as objects of an S3 bucket, at <prefix>/<sha256[:2]>/<sha256>, SHA-256 checked.

    ``archive`` is ``s3://BUCKET[/PREFIX]``. Every upload carries the payload's SHA-256 (its key) as
    ``ChecksumSHA256``, which the server verifies before it stores the bytes; a payload of
    ``multipart_threshold`` bytes or more goes in parts, each with its own checksum, and the composite
    checksum the server reports is compared with ours. A put first asks HEAD: a payload stored with
    the right checksum is not sent again (an object whose checksum is not the payload's is replaced).
    A get asks for the checksum (botocore checks the body against it) and ``verify`` hashes the bytes.
    """

    name = "s3"
    version = "1.0"
    extras = (Extra("boto3", "stoq-analysis[s3]", "the s3 archiver cannot start"),)

    class Options(PluginOptions):
        """The S3 endpoint and how payloads are sent; credentials come from boto3's usual chain."""

        endpoint_url: str = Field("", description="Endpoint of an S3-compatible server (http://minio:9000); empty: AWS.")
        region: str = Field("", description="Region (empty: boto3's configuration, e.g. AWS_REGION).")
        addressing_style: Literal["auto", "path", "virtual"] = Field(
            "auto", description="Bucket in the path or the host name; auto: path when endpoint_url is set.")
        multipart_threshold: int = Field(64 << 20, ge=5 << 20, description="Payloads of this many bytes or more are uploaded in parts.")
        part_size: int = Field(16 << 20, ge=5 << 20, le=5 << 30, description="Bytes of each part of a multipart upload (S3: 5 MiB at least).")
        max_attempts: int = Field(5, ge=1, le=20, description="Attempts per request: botocore's standard retries, with backoff, on throttling, 5xx and connection errors.")
        connect_timeout: float = Field(10.0, gt=0, description="Seconds to connect to the server.")
        read_timeout: float = Field(60.0, gt=0, description="Seconds to wait for the server's answer.")
        concurrency: int = Field(8, ge=1, le=64, description="Uploads at once when a batch is archived (stoq submit's files).")
        create_bucket: bool = Field(False, description="Create the bucket when it does not exist.")

    def __init__(self, location: str = "", options: PluginOptions | None = None) -> None:
        super().__init__(location, options)
        opts = self.options
        self._where: _s3.Location | None = None
        self._client = _s3.Client(lambda: _s3.make_client(
            opts.endpoint_url, opts.region, opts.addressing_style, opts.max_attempts, opts.connect_timeout,
            opts.read_timeout, max(10, opts.concurrency)))

    def _s3(self) -> tuple[_s3.Location, Any]:
        if self._where is None:
            self._where = _s3.Location.parse(str(self.location))
            self.display = str(self._where)
        return self._where, self._client.get()

    def prepare(self) -> None:
        where, client = self._s3()
        try:
            _s3.call(where, "cannot open the bucket", client.head_bucket, Bucket=where.bucket)
        except ArchiveError as exc:
            if not (_s3.missing(exc) and self.options.create_bucket):
                raise
            try:
                _s3.call(where, "cannot create the bucket", client.create_bucket, Bucket=where.bucket)
            except ArchiveError as race:  # another stoq process created it a moment before
                if _s3.code_of(race.__cause__) != "BucketAlreadyOwnedByYou":
                    raise
        self._client.drop()  # before workers fork: each opens its own

    def _head(self, sha256: str) -> dict[str, Any] | None:
        where, client = self._s3()
        try:
            return _s3.call(where, f"cannot look up payload {sha256}", client.head_object, Bucket=where.bucket,
                            Key=where.key(_s3.checked(sha256)), ChecksumMode="ENABLED")
        except ArchiveError as exc:
            if _s3.missing(exc):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        head = self._head(sha256)
        return head is not None and self._holds(head, sha256, None)

    def _holds(self, head: dict[str, Any], sha256: str, content: bytes | None) -> bool:
        """Whether an object (its HEAD) holds the payload: its checksum is the payload's SHA-256, or,
        for a multipart one, the composite of the payload's parts (compared when ``content`` is given)."""
        stored, meta = head.get("ChecksumSHA256") or "", head.get("Metadata") or {}
        if content is not None and head.get("ContentLength") != len(content):
            return False
        if stored == _s3.b64(bytes.fromhex(sha256)):
            return True
        if not stored or meta.get("sha256") != sha256:
            return False
        part_size = int(meta.get("part-size") or self.options.part_size)
        return content is None or _s3.same_composite(stored, _s3.composite(content, part_size))

    def put(self, sha256: str, content: bytes) -> None:
        head = self._head(sha256)
        if head is not None and self._holds(head, sha256, content):
            return  # stored, with this payload's checksum: idempotent
        where, client = self._s3()
        if len(content) < self.options.multipart_threshold:
            _s3.call(where, f"cannot store payload {sha256}", client.put_object, Bucket=where.bucket,
                     Key=where.key(sha256), Body=content, ChecksumAlgorithm="SHA256",
                     ChecksumSHA256=_s3.b64(bytes.fromhex(sha256)))
            return
        self._multipart(where, client, sha256, content)

    def put_many_located(self, items: list[tuple[str, bytes]]) -> list[Location | None]:
        if len(items) > 1 and self.options.concurrency > 1:
            self._s3()  # one client, made here: boto3 clients are thread-safe
            with ThreadPoolExecutor(min(self.options.concurrency, len(items))) as pool:
                list(pool.map(lambda item: self.put(*item), items))
            return [None] * len(items)
        return super().put_many_located(items)

    def _multipart(self, where: _s3.Location, client: Any, sha256: str, content: bytes) -> None:
        _s3.upload_parts(where, client, sha256, content, self.options.part_size)
        head = self._head(sha256)
        if head is None or not self._holds(head, sha256, content):
            raise ArchiveDamaged(f"payload {sha256} in the archive {where}: the server's checksum "
                                 f"{(head or {}).get('ChecksumSHA256')!r} is not the one of the parts sent")

    def get(self, sha256: str, verify: bool = True) -> bytes:
        where, client = self._s3()
        what = f"cannot read payload {sha256}"
        try:
            answer = _s3.call(where, what, client.get_object, Bucket=where.bucket, Key=where.key(_s3.checked(sha256)),
                              ChecksumMode="ENABLED")
            content = _s3.call(where, what, answer["Body"].read)
        except ArchiveError as exc:
            if _s3.missing(exc):
                raise ArchiveError(f"payload {sha256} is not in the archive {where}") from exc
            raise
        stored = answer.get("ChecksumSHA256", "")
        if (stored and "-" not in stored and stored != _s3.b64(bytes.fromhex(sha256))) or (
                verify and hashlib.sha256(content).hexdigest() != sha256):
            raise ArchiveDamaged(f"payload {sha256} is damaged in the archive {where}: its bytes are not that payload's")
        return content

    def delete(self, sha256: str) -> None:
        where, client = self._s3()
        _s3.call(where, f"cannot delete payload {sha256}", client.delete_object, Bucket=where.bucket,
                 Key=where.key(_s3.checked(sha256)))

    def close(self) -> None:
        self._client.drop()
