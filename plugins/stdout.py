"""The ``stdout`` connector: each finished document as one JSON line on standard output."""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable

import orjson

from stoq.plugin import ConnectorOptions, ConnectorPlugin


class StdoutConnector(ConnectorPlugin):
    """Writes every finished document, one compact JSON line each, to file descriptor 1: for a
    pipeline (a worker's output read by ``jq`` or a container's log collector).

    Written with ``os.write`` to the descriptor itself, below Python's ``sys.stdout`` (which a cluster
    worker redirects into its log), after flushing ``sys.stdout`` so that a line the CLI was writing
    is finished first. Nothing but documents goes there: logs are on stderr.
    """

    name = "stdout"
    version = "1.0"

    class Options(ConnectorOptions):
        """No options of its own (``max_tlp`` only)."""

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(doc) + b"\n" for doc in documents)
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]
