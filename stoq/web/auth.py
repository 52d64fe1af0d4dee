"""Who may call the REST API, and how often: tokens, the rate limit, the request-size cap.

Tokens are made by ``stoq tokens create NAME``, which prints the secret once; the store keeps only
its sha256 (table ``api_tokens``, migration 0005), so a copy of the database gives no token away. A
request names its token as ``Authorization: Bearer <secret>``; the secret's sha256 is looked up
(index) and compared again in constant time. A revoked token stops working at its next request:
nothing is cached.

Each token has a budget of ``web_rate_limit`` requests per minute (a token bucket refilled
continuously, per server process); a request over it gets 429 with ``Retry-After``. A request body
over ``web_max_upload`` bytes gets 413: at once when ``Content-Length`` says so (a client that sends
``Expect: 100-continue``, as curl does for large bodies, then sends nothing), else as soon as the
streamed body passes the cap.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable

import orjson
from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.exceptions import HTTPException

from stoq.store import Store, StoreError
from stoq.tables import API_TOKENS as T

#: Every secret begins with this, so that a leaked one is recognisable (secret scanners, logs).
PREFIX = "stoq_"
NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenError(ValueError):
    """A token command that cannot be carried out: a bad name, a name in use."""


@dataclass(frozen=True)
class Token:
    """A token as stored (never its secret)."""

    token_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "name": self.name, "created_at": iso(self.created_at),
                "revoked_at": iso(self.revoked_at)}


def iso(moment: datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC with ``Z`` (SQLite gives naive UTC back); None as None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class TokenBook:
    """The ``api_tokens`` table of a result store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str) -> tuple[Token, str]:
        """A new token named ``name``: (the stored token, its secret). The secret exists only in
        this return value. A name that already has a live token is refused (revoke it first)."""
        if not NAME.fullmatch(name):
            raise TokenError(f"token name {name!r}: use 1 to 64 letters, digits, '_', '.', '@', '-'")
        if any(t.name == name and t.revoked_at is None for t in self.list()):
            raise TokenError(f"a token named {name!r} exists; revoke it first (`stoq tokens revoke {name}`)")
        secret = PREFIX + secrets.token_urlsafe(32)
        token = Token(secrets.token_hex(4), name, datetime.now(timezone.utc), None)
        try:
            with self.store.engine.execution_options(stoq_write=True).begin() as conn:
                conn.execute(insert(T).values(token_id=token.token_id, name=name, token_sha256=digest(secret),
                                              created_at=token.created_at, revoked_at=None))
        except IntegrityError:  # the same 32-bit id drawn twice: draw again
            return self.create(name)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create the token in {self.store.display}: {exc}") from exc
        return token, secret

    def list(self) -> list[Token]:
        """Every token, live and revoked, oldest first."""
        try:
            with self.store.engine.connect() as conn:
                rows = conn.execute(select(T.c.token_id, T.c.name, T.c.created_at, T.c.revoked_at)
                                    .order_by(T.c.created_at, T.c.token_id)).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the tokens of {self.store.display}: {exc}") from exc
        return [Token(*row) for row in rows]

    def revoke(self, name: str) -> list[Token]:
        """Revokes the live tokens named ``name`` (or whose id is ``name``); returns them (empty: none)."""
        live = [t for t in self.list() if t.revoked_at is None and name in (t.name, t.token_id)]
        if live:
            try:
                with self.store.engine.execution_options(stoq_write=True).begin() as conn:
                    conn.execute(update(T).where(and_(T.c.token_id.in_([t.token_id for t in live]),
                                                      T.c.revoked_at.is_(None)))
                                 .values(revoked_at=datetime.now(timezone.utc)))
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot revoke the token in {self.store.display}: {exc}") from exc
        return live

    def verify(self, secret: str) -> Token | None:
        """The live token whose secret this is, or None."""
        if not secret.startswith(PREFIX) or len(secret) > 256:
            return None
        wanted = digest(secret)
        with self.store.engine.connect() as conn:
            row = conn.execute(select(T.c.token_id, T.c.name, T.c.created_at, T.c.revoked_at, T.c.token_sha256)
                               .where(T.c.token_sha256 == wanted)).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_sha256, wanted):
            return None
        return Token(row.token_id, row.name, row.created_at, row.revoked_at)


class RateLimiter:
    """``per_minute`` requests per minute per key: a token bucket of that size, refilled continuously.
    ``take`` returns 0 when the request may go, else the seconds until it could."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        if self.per_minute <= 0:
            return 0.0
        rate = self.per_minute / 60.0
        with self._lock:
            now = self.clock()
            tokens, when = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - when) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()) -> None:
    """A complete JSON response, from a middleware."""
    raw = orjson.dumps(body)
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


def bearer(scope: Scope) -> str | None:
    """The secret of an ``Authorization: Bearer`` header, if the request has one."""
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            kind, _, secret = value.decode("latin-1").strip().partition(" ")
            return secret.strip() if kind.lower() == "bearer" and secret.strip() else None
    return None


class AuthGate:
    """ASGI middleware: every HTTP request (and websocket) but those under ``public`` paths needs a
    live token (401 otherwise) within its rate (429). ``book`` None: no authentication (``stoq serve --no-auth``,
    loopback only). The token goes to ``scope["state"]["token"]`` for the routes. It runs before the
    body is read: an unauthenticated upload is refused without reading it."""

    def __init__(self, app: ASGIApp, book: TokenBook | None, limiter: RateLimiter,
                 public: Iterable[str] = ("/metrics",)) -> None:
        self.app, self.book, self.limiter = app, book, limiter
        self.public = tuple(public)

    def is_public(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.book is None or self.is_public(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        from anyio import to_thread

        secret = bearer(scope)
        token = None if secret is None else await to_thread.run_sync(self.book.verify, secret)
        if scope["type"] == "websocket" and token is None:  # refused before it is accepted: an HTTP 403
            await send({"type": "websocket.close", "code": 1008})
            return
        if token is None:
            why = "no token: send Authorization: Bearer <token> (`stoq tokens create NAME`)" if secret is None \
                else "the token is unknown or revoked"
            await send_json(send, 401, {"detail": why}, [("www-authenticate", "Bearer")])
            return
        wait = self.limiter.take(token.token_id)
        if wait > 0:
            await send_json(send, 429, {"detail": f"more than {self.limiter.per_minute} requests per minute "
                                                  f"with this token"},
                            [("retry-after", str(max(1, math.ceil(wait))))])
            return
        scope.setdefault("state", {})["token"] = token
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """A request body passed the cap while it was read. An ``HTTPException``: the framework's body
    parsing lets it through (any other error there becomes a 400), and answers it as a 413."""

    def __init__(self, detail: str) -> None:
        super().__init__(413, detail, headers={"connection": "close"})


#: Bytes of an oversized body still read (and dropped) before the 413, so that a client that sends
#: its whole body before reading the answer gets the 413 rather than a reset connection.
DRAIN = 4 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _refusal(self) -> dict[str, Any]:
        return {"detail": f"the request body is over the limit of {self.max_bytes} bytes (setting web_max_upload)"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await send_json(send, 413, self._refusal(), [("connection", "close")])
                    return
        seen = 0
        started = over = False
        more = True  # the body has more to come

        async def counted() -> dict[str, Any]:
            nonlocal seen, over, more
            message = await receive()
            more = message["type"] == "http.request" and bool(message.get("more_body", False))
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge(self._refusal()["detail"])
            return message

        async def drain() -> None:
            nonlocal more
            drained = 0
            while more and drained < DRAIN:
                message = await receive()
                drained += len(message.get("body", b""))
                more = message["type"] == "http.request" and bool(message.get("more_body", False))

        async def watched(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if over and not started:
                    await drain()
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await drain()
            await send_json(send, 413, self._refusal(), [("connection", "close")])
