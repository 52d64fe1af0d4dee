"""MongoDB for the ``mongodb`` connector and the ``gridfs`` archiver: the client, the database named
by the URL, BSON-safe documents and error names. Plain code with no plugin API; pymongo is imported
when a client is first needed (``stoq list`` and a plain install never import it)."""

from __future__ import annotations

import os
import re
from typing import Any, Callable, TypeVar

from stoq.plugin import ArchiveError, ArchiveUnavailable

T = TypeVar("T")
_PASSWORD = re.compile(r"(://[^/@:]*):[^/@]*@")
INT64 = (-(1 << 63), (1 << 63) - 1)


def shown(url: str) -> str:
    """A URL as messages show it: no password."""
    return _PASSWORD.sub(r"\1:***@", url)


def need_pymongo() -> Any:
    """pymongo, or an ArchiveError saying how to install it (the ``mongodb`` extra)."""
    try:
        import gridfs  # noqa: F401  (pymongo's; the gridfs archiver needs it)
        import pymongo
    except ImportError as exc:
        raise ArchiveError("MongoDB needs pymongo: pip install 'stoq-analysis[mongodb]'") from exc
    return pymongo


class Client:
    """One ``MongoClient`` per process (pymongo's clients are not fork-safe), made on first use."""

    def __init__(self, url: str, timeout_ms: int) -> None:
        self.url, self.timeout_ms = url, timeout_ms
        self._pid, self._client = -1, None

    def database(self, default: str) -> Any:
        """The database the URL names (``mongodb://host/db``), else ``default``."""
        if self._client is None or self._pid != os.getpid():
            pymongo = need_pymongo()

            self._client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=self.timeout_ms,
                                               connectTimeoutMS=self.timeout_ms, appname="stoq")
            self._pid = os.getpid()
        return self._client.get_default_database(default)

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client, self._pid = None, -1


def bson_safe(value: Any) -> Any:
    """A document as BSON holds it: an integer outside int64 (a hostile file's field) becomes its
    decimal text, rather than failing the whole batch."""
    if isinstance(value, dict):
        return {key: bson_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [bson_safe(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return str(value)
    return value


def archive_call(url: str, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(...)`` with pymongo's errors turned into the archive's named errors."""
    from pymongo.errors import ConnectionFailure, PyMongoError

    try:
        return fn(*args, **kwargs)
    except ConnectionFailure as exc:  # server selection timed out, connection refused or reset
        raise ArchiveUnavailable(f"{what}: cannot reach the archive {shown(url)} ({type(exc).__name__})") from exc
    except PyMongoError as exc:
        raise ArchiveError(f"{what} in the archive {shown(url)}: {exc}") from exc
