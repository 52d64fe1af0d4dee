"""The ``jsonl`` connector: appends each finished scan document to a JSON Lines file."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any, Iterable

import orjson
from pydantic import Field

from stoq.plugin import ConnectorOptions, ConnectorPlugin


class JsonlConnector(ConnectorPlugin):
    """Appends every finished document, one compact JSON line each, to ``path``.

    Several processes (embedded workers' parent, cluster workers on one machine) may append to the
    same file: each batch is written under an exclusive ``flock`` with one ``write`` per line on a file
    opened with ``O_APPEND``, so lines never interleave. In the cluster the file is on the worker's
    machine.
    """

    name = "jsonl"
    version = "1.0"

    class Options(ConnectorOptions):
        """Where the documents go."""

        path: Path | None = Field(None, description="File to append to (required; created with mode 0600).")

    def setup(self) -> None:
        if self.options.path is None:
            raise ValueError("jsonl.path is not set (-o jsonl.path=/var/lib/stoq/scans.jsonl)")

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        lines = [orjson.dumps(doc) + b"\n" for doc in documents]
        assert self.options.path is not None  # setup() refused None
        fd = os.open(self.options.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for line in lines:
                os.write(fd, line)
        finally:
            os.close(fd)  # releases the lock
