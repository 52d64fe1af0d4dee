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


@contextlib.contextmanager
def flaky(endpoint: str, failures: int) -> Iterator[dict[str, int]]:
    """An HTTP proxy in front of ``endpoint`` that answers its first ``failures`` requests with S3's
    ``503 SlowDown`` and forwards the rest; yields its counts (``url``: use ``counts["port"]``)."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    target = urlsplit(endpoint)
    counts = {"refused": 0, "forwarded": 0, "port": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                refuse = counts["refused"] < failures
                counts["refused" if refuse else "forwarded"] += 1
            if refuse:
                error = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    counts["port"] = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        server.shutdown()
        server.server_close()
