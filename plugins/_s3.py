"""S3 for the ``s3`` archiver: the location, the client, checksums, multipart uploads, error names.

Plain code with no plugin API. boto3 is imported when a client is first needed (``stoq list`` and a
plain install never import it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from stoq.model import SHA256
from stoq.plugin import ArchiveDamaged, ArchiveError, ArchiveUnavailable

T = TypeVar("T")
#: ``s3://bucket`` or ``s3://bucket/prefix/parts`` (bucket names: 3 to 63 of a-z, 0-9, '.', '-').
_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$")


@dataclass(frozen=True, slots=True)
class Location:
    """Where payloads go: a bucket and a key prefix without slashes at either end."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Location":
        match = _URL.match(url)
        if match is None:
            raise ArchiveError(f"archiver s3 needs the setting archive (STOQ_ARCHIVE) to be s3://BUCKET[/PREFIX], "
                               f"not {url!r}")
        return cls(match.group(1), (match.group(2) or "").strip("/"))

    def key(self, sha256: str) -> str:
        """``<prefix>/<sha256[:2]>/<sha256>``: content-addressed, spread over 256 key prefixes."""
        return f"{self.prefix}/{sha256[:2]}/{sha256}" if self.prefix else f"{sha256[:2]}/{sha256}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def checked(sha256: str) -> str:
    """``sha256`` if it is a sha256 in hex (a key is never made of anything else)."""
    if not SHA256.fullmatch(sha256):
        raise ArchiveError(f"not a sha256: {sha256!r}")
    return sha256


def b64(digest: bytes) -> str:
    """A digest as S3's checksum headers carry it."""
    return base64.b64encode(digest).decode()


def parts(size: int, part_size: int) -> Iterator[tuple[int, int, int]]:
    """(part number, start, end) of a multipart upload of ``size`` bytes."""
    for number, start in enumerate(range(0, size, part_size), 1):
        yield number, start, min(start + part_size, size)


def composite(content: bytes, part_size: int) -> str:
    """S3's checksum of a multipart object uploaded in ``part_size`` parts: the base64 SHA-256 of the
    parts' SHA-256 digests, then ``-<number of parts>``."""
    view = memoryview(content)
    digests = [hashlib.sha256(view[start:end]).digest() for _, start, end in parts(len(content), part_size)]
    return f"{b64(hashlib.sha256(b''.join(digests)).digest())}-{len(digests)}"


def same_composite(stored: str, expected: str) -> bool:
    """Whether a multipart object's checksum is the expected composite (``-<parts>`` may be left off:
    moto's HEAD does)."""
    return stored.split("-")[0] == expected.split("-")[0]


def make_client(endpoint_url: str, region: str, addressing_style: str, max_attempts: int,
                connect_timeout: float, read_timeout: float, pool: int) -> Any:
    """A boto3 S3 client: credentials from boto3's usual chain (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, ~/.aws, an instance role); retries in botocore's standard mode."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ArchiveError("archiver s3 needs boto3: pip install 'stoq-analysis[s3]'") from exc

    if addressing_style == "auto" and endpoint_url:
        addressing_style = "path"  # MinIO and most S3-compatible servers: no bucket.host names
    config = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"}, connect_timeout=connect_timeout,
                    read_timeout=read_timeout, max_pool_connections=pool,
                    s3={"addressing_style": addressing_style},
                    request_checksum_calculation="when_required", response_checksum_validation="when_supported")
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                          config=config)


def code_of(exc: BaseException) -> str:
    """The S3 error code of a ClientError (``NoSuchKey``, ``404``, ``BadDigest``...), else ``""``."""
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def call(where: Location, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
    """``fn(**kwargs)`` with botocore's errors turned into the archive's named errors."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                     FlexibleChecksumError)

    try:
        return fn(**kwargs)
    except FlexibleChecksumError as exc:
        raise ArchiveDamaged(f"{what} in the archive {where}: the checksum does not match ({exc})") from exc
    except BotoConnectionError as exc:  # EndpointConnectionError, timeouts: after the retries
        raise ArchiveUnavailable(f"{what}: cannot reach the archive {where} ({exc})") from exc
    except ClientError as exc:
        if code_of(exc) in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
            raise ArchiveDamaged(f"{what} in the archive {where}: the server refused the bytes, their checksum "
                                 f"does not match ({code_of(exc)})") from exc
        raise ArchiveError(f"{what} in the archive {where}: {exc}") from exc
    except BotoCoreError as exc:
        raise ArchiveError(f"{what} in the archive {where}: {exc}") from exc


def missing(exc: ArchiveError) -> bool:
    """Whether an ArchiveError from :func:`call` means that the object (or bucket) is not there."""
    return code_of(exc.__cause__) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") if exc.__cause__ else False


class Client:
    """One boto3 client per process (a client made before a fork is not used after it)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._pid = -1
        self._client: Any = None

    def get(self) -> Any:
        if self._pid != os.getpid() or self._client is None:
            self._client, self._pid = self._factory(), os.getpid()
        return self._client

    def drop(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client, self._pid = None, -1


def upload_parts(where: Location, client: Any, sha256: str, content: bytes, part_size: int) -> None:
    """A multipart upload of ``content`` at its key, each part with its SHA-256 (the server checks each);
    aborted on any failure, so no half-upload is left to be billed."""
    key, what = where.key(sha256), f"cannot store payload {sha256}"
    upload = call(where, what, client.create_multipart_upload, Bucket=where.bucket, Key=key, ChecksumAlgorithm="SHA256",
                  Metadata={"sha256": sha256, "part-size": str(part_size)})["UploadId"]
    view, done = memoryview(content), []
    try:
        for number, start, end in parts(len(content), part_size):
            checksum = b64(hashlib.sha256(view[start:end]).digest())
            answer = call(where, what, client.upload_part, Bucket=where.bucket, Key=key, UploadId=upload,
                          PartNumber=number, Body=bytes(view[start:end]), ChecksumAlgorithm="SHA256",
                          ChecksumSHA256=checksum)
            done.append({"ETag": answer["ETag"], "PartNumber": number, "ChecksumSHA256": checksum})
        call(where, what, client.complete_multipart_upload, Bucket=where.bucket, Key=key, UploadId=upload,
             MultipartUpload={"Parts": done})
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=where.bucket, Key=key, UploadId=upload)
        except Exception:  # the upload's own error is the one to report
            pass
        raise
