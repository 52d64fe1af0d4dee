"""A fake outside service for the intelligence plugins' tests: a real HTTP server on an ephemeral port of
127.0.0.1 that records every request (method, path, query, headers, body) and answers from a table of
routes, as the service's documentation says it answers (status, headers, JSON)."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float


#: A route answers (status, JSON or bytes, extra headers); it may be a function of the request.
Reply = tuple[int, Any, dict[str, str]]


class FakeService:
    """``routes[(method, path)]`` is a ``Reply`` or a list of them (served in turn, the last repeated) or a
    callable taking the ``Seen`` request; anything else is a 404. ``delay`` seconds before each answer."""

    def __init__(self, routes: dict[tuple[str, str], Any] | None = None, delay: float = 0.0) -> None:
        self.routes = routes or {}
        self.delay = delay
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(self.command, parsed.path, urllib.parse.parse_qs(parsed.query),
                            {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                with fake._lock:
                    fake.seen.append(seen)
                    count = sum(1 for s in fake.seen if (s.method, s.path) == (seen.method, seen.path))
                if fake.delay:
                    time.sleep(fake.delay)
                route = fake.routes.get((seen.method, seen.path), (404, {"error": {"code": "NotFoundError"}}, {}))
                if isinstance(route, list):
                    route = route[min(count, len(route)) - 1]
                status, data, headers = route(seen) if callable(route) else route
                raw = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeService":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[tuple[str, str]]:
        return [(s.method, s.path) for s in self.seen]


def reply(status: int, data: Any = None, **headers: str) -> Reply:
    return (status, {} if data is None else data, {k.replace("_", "-"): v for k, v in headers.items()})
