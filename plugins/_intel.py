"""What the intelligence workers (``vtmis``, ``opswat``, ``censys``, ``passivetotal``) share: their common
options, an HTTP client with a timeout and bounded retries, a rate limit shared by every process that
uses the same Redis (else by every process on the machine, through SQLite), a cache of answers, the
named failures they report as flags, and the indicators they look up.

The client is the standard library's ``urllib.request``: a plain install needs nothing more. API keys
come only from the plugin's options (``stoq.toml``, ``STOQ_<PLUGIN>__API_KEY``, ``-o``) or, when the
option is empty, from that variable in the environment of the process running the plugin (a cluster's
intel worker: the key then never travels with a submission). A key is sent only in the header the
service documents; it is never part of an error message, a flag, a log line or a document.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import platformdirs
from pydantic import Field, SecretStr, field_validator

from stoq.plugin import Payload, PluginOptions
from stoq_plugins._ioc import extract

#: Seconds between a payload's first answer of 429/5xx and its retry, doubled at each attempt.
BACKOFF = 1.0
#: MIME types whose text is searched for indicators (besides every ``text/*``).
TEXT_MIMES = ("application/json", "application/xml", "application/javascript", "application/x-javascript")
UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
         "d": 86400, "day": 86400}


class ServiceOptions(PluginOptions):
    """The options every intelligence plugin has; each plugin sets ``url`` and ``rate`` defaults."""

    url: str = Field("", description="Base URL of the service's API.")
    api_key: SecretStr = Field(SecretStr(""), description="API key (empty: the STOQ_<PLUGIN>__API_KEY variable of "
                                                          "the process running the plugin). Never logged or stored.")
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for one HTTP answer.")
    retries: int = Field(3, ge=0, le=10, description="Retries of a request answered 429 or 5xx, or not answered.")
    max_retry_wait: float = Field(60.0, ge=0, description="Longest wait before a retry (backoff 1 s, 2 s, 4 s... "
                                                          "up to it; a Retry-After beyond it: give up).")
    rate: str = Field("4/minute", description="Most requests per period for all processes together "
                                              "(N/second|minute|hour|day, or N/Ks; empty: no limit).")
    max_rate_wait: float = Field(30.0, ge=0, description="Longest wait for the rate limit in one payload's "
                                                         "scan, all requests together (then intel:rate-limited).")
    cache_ttl: float = Field(86400.0, ge=0, description="Seconds an answer is reused (0: no cache).")
    redis_url: str = Field("", description="Redis shared by the cluster for the rate limit and the cache (empty: "
                                           "STOQ_RESULT_BACKEND if it is redis://, else SQLite under the user's "
                                           "cache directory, shared by the processes of one machine).")
    max_indicators: int = Field(10, ge=0, description="Most indicators from a text payload looked up (limit:intel-iocs).")
    max_text: int = Field(1024 * 1024, ge=0, description="Most bytes of a text payload searched for indicators.")

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)  # refused with the configuration, before any payload
        return value


class ServiceError(Exception):
    """A request that got no usable answer; ``flag`` names why (``intel:offline``...)."""

    flag = "intel:error"


class Offline(ServiceError):
    flag = "intel:offline"


class Unauthorised(ServiceError):
    flag = "intel:unauthorised"


class Quota(ServiceError):
    flag = "intel:quota"


class RateLimited(ServiceError):
    flag = "intel:rate-limited"


class Unavailable(ServiceError):
    flag = "intel:unavailable"


class Rejected(ServiceError):
    flag = "intel:rejected"


class NoKey(ServiceError):
    flag = "intel:no-key"


@dataclass
class Answer:
    """A service's answer: the HTTP status (200, or 404 for "unknown to the service") and its JSON."""

    status: int
    data: Any = None


def parse_rate(rate: str) -> tuple[int, float] | None:
    """``"4/minute"`` -> (4, 60.0); ``"10/30s"`` -> (10, 30.0); empty -> None (no limit)."""
    if not rate.strip():
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([a-z]+)\s*", rate.lower())
    unit = match.group(3).rstrip("s") if match and match.group(3) not in ("s",) else "s" if match else ""
    if not match or unit not in UNITS or int(match.group(1)) < 1:
        raise ValueError(f"rate {rate!r} is not N/second, N/minute, N/hour, N/day or N/Ks")
    return int(match.group(1)), float(match.group(2) or 1) * UNITS[unit]


# Sliding window log in Redis: the times of the requests of the last window, in a sorted set; the clock
# is Redis's own (every worker sees the same one). Returns 0 (granted) or the milliseconds to wait.
LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class Backend:
    """Where the rate limit and the cache live: Redis (the cluster) or a SQLite file (one machine)."""

    def __init__(self, redis_url: str, sqlite_path: Path) -> None:
        self.redis: Any = None
        self.sqlite_path = sqlite_path
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=10)
            self._script = self.redis.register_script(LUA)

    def _db(self) -> sqlite3.Connection:
        self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS hits (key TEXT, at REAL)")
        db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT, until REAL)")
        return db

    def take(self, key: str, limit: int, window: float) -> float:
        """Takes one request of the window (0.0) or says how many seconds to wait for one."""
        if self.redis is not None:
            return int(self._script(keys=[key], args=[limit, int(window * 1000), uuid.uuid4().hex])) / 1000
        with closing(self._db()) as db:
            db.execute("BEGIN IMMEDIATE")  # one process at a time counts and adds
            now = time.time()
            db.execute("DELETE FROM hits WHERE key = ? AND at <= ?", (key, now - window))
            times = [row[0] for row in db.execute("SELECT at FROM hits WHERE key = ? ORDER BY at", (key,))]
            if len(times) < limit:
                db.execute("INSERT INTO hits VALUES (?, ?)", (key, now))
                db.execute("COMMIT")
                return 0.0
            db.execute("COMMIT")
            return max(0.001, times[0] + window - now)

    def get(self, key: str) -> Any:
        if self.redis is not None:
            raw = self.redis.get(key)
        else:
            with closing(self._db()) as db:
                row = db.execute("SELECT value FROM cache WHERE key = ? AND until > ?", (key, time.time())).fetchone()
            raw = row[0] if row else None
        return None if raw is None else json.loads(raw)

    def delete(self, key: str) -> None:
        if self.redis is not None:
            self.redis.delete(key)
            return
        with closing(self._db()) as db:
            db.execute("DELETE FROM cache WHERE key = ?", (key,))

    def put(self, key: str, value: Any, ttl: float) -> None:
        raw = json.dumps(value)
        if self.redis is not None:
            self.redis.set(key, raw, px=max(1, int(ttl * 1000)))
            return
        with closing(self._db()) as db:
            db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)", (key, raw, time.time() + ttl))


def redis_url_of(option: str) -> str:
    if option:
        return "" if option == "none" else option
    backend = os.environ.get("STOQ_RESULT_BACKEND", "")
    return backend if backend.startswith(("redis://", "rediss://", "unix://")) else ""


@dataclass
class Service:
    """One plugin's client: ``call`` sends a request through the rate limit and the retries; ``lookup``
    answers from the cache first. ``auth`` adds the service's key header to a request's headers."""

    plugin: str
    version: str
    options: ServiceOptions
    auth: Callable[[str], dict[str, str]]
    backend: Backend = field(init=False)
    #: Until when (``time.monotonic()``) the current payload's requests may wait for the rate limit.
    rate_deadline: float = 0.0

    def __post_init__(self) -> None:
        cache = Path(platformdirs.user_cache_dir("stoq", appauthor=False)) / "intel.sqlite"
        self.backend = Backend(redis_url_of(self.options.redis_url), cache)
        self.rate = parse_rate(self.options.rate)

    def key(self) -> str:
        key = self.options.api_key.get_secret_value() or os.environ.get(f"STOQ_{self.plugin.upper()}__API_KEY", "")
        if not key:
            raise NoKey(f"{self.plugin}: no API key (STOQ_{self.plugin.upper()}__API_KEY)")
        return key

    def _wait_for_rate(self) -> None:
        if self.rate is None:
            return
        while (wait := self.backend.take(f"stoq:intel:rate:{self.plugin}", *self.rate)) > 0:
            if time.monotonic() + wait > self.rate_deadline:
                raise RateLimited(f"{self.plugin}: rate {self.options.rate} used up for {wait:.0f} s more")
            time.sleep(wait)

    def call(self, method: str, path: str, *, query: dict[str, str] | None = None, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        """One request (``path`` under ``url``): 200 or 404 are answers; 401/403, 429 and 5xx after the
        retries, other 4xx and no answer at all are a ``ServiceError``."""
        url = self.options.url.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
        all_headers = {"Accept": "application/json", "User-Agent": "stoq"} | (headers or {}) | self.auth(self.key())
        for attempt in range(self.options.retries + 1):
            self._wait_for_rate()
            request = urllib.request.Request(url, data=body, headers=all_headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    return Answer(response.status, decode(response.read(), path))
            except urllib.error.HTTPError as exc:
                status, retry_after = exc.code, exc.headers.get("Retry-After")
                if status == 404:
                    return Answer(404, None)
                if status in (401, 403):
                    raise Unauthorised(f"{self.plugin}: {method} {path}: HTTP {status}") from None
                if status != 429 and status < 500:
                    raise Rejected(f"{self.plugin}: {method} {path}: HTTP {status}") from None
                error: ServiceError = (Quota if status == 429 else Unavailable)(
                    f"{self.plugin}: {method} {path}: HTTP {status} after {attempt + 1} attempt(s)")
            except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out, DNS
                reason = getattr(exc, "reason", exc)
                status, retry_after = 0, None
                error = Offline(f"{self.plugin}: {method} {path}: {type(reason).__name__}")
            if attempt == self.options.retries:
                raise error
            wait = retry_wait(retry_after, min(BACKOFF * 2 ** attempt, self.options.max_retry_wait))
            if wait > self.options.max_retry_wait:  # the service asks for longer than we may wait
                raise error
            time.sleep(wait)
        raise AssertionError("unreachable")

    def cache_key(self, kind: str, indicator: str) -> str:
        return f"stoq:intel:cache:{self.plugin}:{self.version}:{kind}:{indicator}"

    def forget(self, kind: str, indicator: str) -> None:
        """Drops a cached answer that is no longer true (a file "unknown" until we uploaded it)."""
        self.backend.delete(self.cache_key(kind, indicator))

    def lookup(self, kind: str, indicator: str, fetch: Callable[[], Answer]) -> Answer:
        """``fetch()``'s answer for (kind, indicator), from the cache when it holds one."""
        self.key()  # no key: intel:no-key before anything is touched (cache, rate limit, network)
        key = self.cache_key(kind, indicator)
        if self.options.cache_ttl > 0 and (hit := self.backend.get(key)) is not None:
            return Answer(hit["status"], hit["data"])
        answer = fetch()
        if self.options.cache_ttl > 0:
            self.backend.put(key, {"status": answer.status, "data": answer.data}, self.options.cache_ttl)
        return answer


def service_for(plugin: Any, options: ServiceOptions, auth: Callable[[str], dict[str, str]]) -> Service:
    """The plugin's ``Service`` for these options (one per distinct options, kept on the plugin), its
    rate-limit waits bounded by ``max_rate_wait`` from now: call it once per payload."""
    services = plugin.__dict__.setdefault("_services", {})
    if options not in services:
        services[options] = Service(plugin.name, plugin.version, options, auth)
    services[options].rate_deadline = time.monotonic() + options.max_rate_wait
    return services[options]


def decode(raw: bytes, path: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        raise Rejected(f"answer to {path} is not JSON") from None


def retry_wait(header: str | None, default: float) -> float:
    """Seconds to wait before a retry: the ``Retry-After`` header (seconds or an HTTP date), else ``default``."""
    if header is None:
        return default
    if header.strip().isdigit():
        return float(header.strip())
    when = email.utils.parsedate_to_datetime(header) if header.strip() else None
    return max(0.0, when.timestamp() - time.time()) if when is not None else default


def is_text(payload: Payload) -> bool:
    return payload.mime.startswith("text/") or payload.mime in TEXT_MIMES


def indicators(payload: Payload, options: ServiceOptions, kinds: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (kind, value) indicators of ``kinds`` in a text payload, at most ``max_indicators``, in
    ``kinds`` order then sorted; and the flags of what was left out. Intel workers run in parallel with
    ``iocextract`` (none sees another's output), so each extracts with the same code (``_ioc``)."""
    if not is_text(payload) or options.max_indicators == 0:
        return [], []
    found = extract(payload.content[:options.max_text].decode("utf-8", "replace"), time.monotonic() + 20)
    every = [(kind, value) for kind in kinds for value in sorted(found.iocs[kind])]
    flags = ["limit:intel-iocs"] if len(every) > options.max_indicators else []
    flags += ["limit:ioc-size"] if payload.size > options.max_text else []
    flags += ["limit:ioc-time"] if found.timed_out else []
    return every[:options.max_indicators], flags


def run_lookups(lookups: list[Callable[[], Any]]) -> tuple[list[Any], list[str]]:
    """Runs each lookup, stopping at the first failure (the next would fail the same way: no key, over
    quota, offline); returns the answers so far and the failure's flag."""
    answers = []
    for lookup in lookups:
        try:
            answers.append(lookup())
        except ServiceError as exc:
            return answers, [exc.flag]
    return answers, []
