"""Local stand-ins for outside services the connectors talk to, started by the tests on loopback:
an Elasticsearch HTTP endpoint answering the bulk and index-template APIs as Elastic documents them,
and a Fluentd forward-protocol receiver. Each records exactly what it received."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgpack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeElasticsearch:
    """``PUT /_index_template/<name>`` -> ``{"acknowledged": true}``; ``POST|PUT /_bulk`` -> one item per
    action, 201 ``created`` (or 200 ``updated`` for an id seen before), or the status the test asked for
    in ``fail`` (_id -> 429 or 500, with Elastic's error shapes). Every response carries the header
    ``X-Elastic-Product: Elasticsearch``, which the official client requires. ``start``/``stop`` may be
    called again on the same port (an outage)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.requests: list[tuple[str, str, bytes]] = []  #: (method, path, body) as received
        self.indexed: dict[str, dict[str, Any]] = {}  #: "index/_id" -> source, as last written
        self.writes: list[str] = []  #: "index/_id" of every successful index operation, repeats included
        self.fail: dict[str, int] = {}
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeElasticsearch:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle_any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                fake.requests.append((self.command, self.path, body))
                if path.startswith("/_index_template/") and self.command == "PUT":
                    json.loads(body)
                    return self.answer(200, {"acknowledged": True})
                if path == "/_bulk" and self.command in ("POST", "PUT"):
                    return self.answer(200, fake.bulk(body))
                self.answer(404, {"error": {"type": "not_found", "reason": f"no handler for {self.command} {path}"},
                                  "status": 404})

            do_GET = do_PUT = do_POST = do_HEAD = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def bulk(self, body: bytes) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        items, errors = [], False
        for action, source in zip(lines[::2], lines[1::2]):
            (op, meta), = action.items()
            key = f"{meta['_index']}/{meta['_id']}"
            status = self.fail.get(meta["_id"])
            if status == 429:
                errors = True
                items.append({op: {"_index": meta["_index"], "_id": meta["_id"], "status": 429, "error": {
                    "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}}})
            elif status is not None:
                errors = True
                items.append({op: {"_index": meta["_index"], "_id": meta["_id"], "status": status, "error": {
                    "type": "illegal_state_exception", "reason": "shard failure"}}})
            else:
                created = key not in self.indexed
                self.indexed[key] = source
                self.writes.append(key)
                items.append({op: {"_index": meta["_index"], "_id": meta["_id"], "_version": self.writes.count(key),
                                   "result": "created" if created else "updated", "_seq_no": len(self.writes) - 1,
                                   "_primary_term": 1, "status": 201 if created else 200,
                                   "_shards": {"total": 1, "successful": 1, "failed": 0}}})
        return {"took": 3, "errors": errors, "items": items}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class FakeFluentd:
    """A Fluentd ``in_forward`` stand-in: accepts TCP connections and decodes the msgpack stream of
    each into events (tag, time, record), in Message, Forward and PackedForward modes."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        self.server: socketserver.ThreadingTCPServer | None = None
        self.lock = threading.Lock()

    def start(self) -> FakeFluentd:
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    unpacker.feed(data)
                    for message in unpacker:
                        fake.receive(message)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def receive(self, message: list[Any]) -> None:
        tag, second = message[0], message[1]
        with self.lock:
            if isinstance(second, list):  # Forward mode: [tag, [[time, record], ...], option?]
                self.events.extend((tag, t, r) for t, r in second)
            elif isinstance(second, bytes):  # PackedForward: [tag, msgpack stream of [time, record]]
                entries = msgpack.Unpacker(raw=False, strict_map_key=False)
                entries.feed(second)
                self.events.extend((tag, t, r) for t, r in entries)
            else:  # Message mode: [tag, time, record, option?]
                self.events.append((tag, second, message[2]))

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
