"""A local S3-compatible server for the s3 archiver's tests: moto's standalone server (``moto[server]``,
its ``ThreadedMotoServer``: a real HTTP server speaking the S3 REST API) on an ephemeral loopback port.

Not a mock of our infrastructure: S3 is an outside service. moto keeps objects in memory and, unlike
AWS and MinIO, stores a ``ChecksumSHA256`` it is given without checking it against the body; the
tests use that to put an object whose stored checksum is not its bytes' (damage at rest)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

#: boto3 needs credentials and a region; moto accepts any.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stoq-test", "AWS_SECRET_ACCESS_KEY": "stoq-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Runs a moto S3 server for the block; yields its endpoint URL (``http://127.0.0.1:PORT``). The
    credentials above are put in this process's environment for the block."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def raw_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A plain boto3 client on the server, to look behind the archiver's back."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"}))
