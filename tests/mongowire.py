"""A minimal MongoDB wire-protocol server for the tests of the mongodb connector and the gridfs archiver.

No MongoDB server can be installed on this project's machines (not in Debian; the npm and PyPI
packages that run one download ``mongod`` at install or run time, which cannot be done here; FerretDB
is a Go program no registry we reach ships). So pymongo, unchanged, talks to this server over a real
TCP socket on an ephemeral loopback port, with the real protocol: the handshake as ``OP_QUERY``
(answered with ``OP_REPLY``), everything after as ``OP_MSG`` (body and document-sequence sections),
BSON encoded and decoded by pymongo's ``bson`` package. It keeps collections in memory and
implements what the two plugins and GridFS send, as MongoDB documents it:

* ``hello``/``isMaster`` (a standalone server of wire version 17, MongoDB 6.0), ``ping``, ``endSessions``;
* ``insert`` (duplicate ``_id`` and unique-index violations answered as write error 11000),
  ``update`` (replacement and ``$set``, ``upsert``, ``multi``), ``delete`` (``limit`` 0 or 1);
* ``find`` (filter, sort, projection, skip, limit, batches of at most 4 MiB continued by ``getMore``),
  ``killCursors``, ``createIndexes`` (``unique`` enforced), ``listIndexes``, ``drop``.

Filters: equality (a dotted path reaches into sub-documents and matches any element of an array, as
MongoDB does), ``$in``, ``$eq``, ``$gt``/``$gte``/``$lt``/``$lte``, ``$exists``. Anything else is
answered with MongoDB's ``CommandNotFound`` or ``BadValue`` error, never silently ignored. It is a
test double of an outside service, not a database: no journal, no authentication, no transactions.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from datetime import datetime, timezone
from typing import Any, Iterator

import bson
from bson.codec_options import CodecOptions

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
_HEADER = struct.Struct("<iiii")
_CODEC = CodecOptions(tz_aware=True)
_MISSING = object()
BATCH_BYTES = 4 << 20


class CommandError(Exception):
    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.code, self.name = code, name


def _values(doc: Any, path: list[str]) -> Iterator[Any]:
    """Every value a dotted path reaches (arrays traversed)."""
    if not path:
        yield doc
        return
    if isinstance(doc, dict):
        if path[0] in doc:
            yield from _values(doc[path[0]], path[1:])
    elif isinstance(doc, list):
        if path[0].isdigit() and int(path[0]) < len(doc):
            yield from _values(doc[int(path[0])], path[1:])
        for item in doc:
            if isinstance(item, dict):
                yield from _values(item, path)


def _candidates(doc: dict[str, Any], field: str) -> list[Any]:
    found = list(_values(doc, field.split(".")))
    return found + [item for value in found if isinstance(value, list) for item in value]


def _compare(op: str, value: Any, arg: Any) -> bool:
    try:
        return {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]
    except TypeError:
        return False


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for field, cond in query.items():
        if field == "$and":
            if not all(matches(doc, sub) for sub in cond):
                return False
            continue
        if field.startswith("$"):
            raise CommandError(2, "BadValue", f"unknown top level operator: {field} (test server)")
        values = _candidates(doc, field)
        if isinstance(cond, dict) and cond and all(key.startswith("$") for key in cond):
            for op, arg in cond.items():
                if op == "$eq":
                    ok = arg in values
                elif op == "$in":
                    ok = any(v in values for v in arg)
                elif op == "$exists":
                    ok = bool(values) == bool(arg)
                elif op in ("$gt", "$gte", "$lt", "$lte"):
                    ok = any(_compare(op, v, arg) for v in values)
                else:
                    raise CommandError(2, "BadValue", f"unknown operator: {op} (test server)")
                if not ok:
                    return False
        elif cond not in values:
            return False
    return True


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is _MISSING or value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, datetime):
        return (3, value.timestamp())
    return (4, str(value))


class Collection:
    def __init__(self) -> None:
        self.docs: dict[Any, dict[str, Any]] = {}
        self.indexes: list[dict[str, Any]] = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]

    def _violates(self, doc: dict[str, Any], ignore: Any = _MISSING) -> str | None:
        if ignore is _MISSING and doc["_id"] in self.docs:
            return f"E11000 duplicate key error collection index: _id_ dup key: {{ _id: {doc['_id']!r} }}"
        for index in self.indexes[1:]:
            if index.get("unique"):
                key = tuple(next(_values(doc, f.split(".")), None) for f in index["key"])
                for other_id, other in self.docs.items():
                    if other_id != ignore and tuple(next(_values(other, f.split(".")), None) for f in index["key"]) == key:
                        return f"E11000 duplicate key error index: {index['name']} dup key: {key!r}"
        return None

    def insert(self, doc: dict[str, Any]) -> str | None:
        doc.setdefault("_id", bson.ObjectId())
        error = self._violates(doc)
        if error is None:
            self.docs[doc["_id"]] = doc
        return error


class Store:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dbs: dict[str, dict[str, Collection]] = {}
        self.cursors: dict[int, tuple[str, list[dict[str, Any]]]] = {}
        self.next_cursor = 1
        self.commands: list[str] = []  # every command name received, in order (tests read it)

    def coll(self, db: str, name: str) -> Collection:
        return self.dbs.setdefault(db, {}).setdefault(name, Collection())

    def run(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        name = next(iter(cmd))
        self.commands.append(name)
        handler = getattr(self, "cmd_" + name.lower(), None)
        if handler is None:
            raise CommandError(59, "CommandNotFound", f"no such command: '{name}' (test server)")
        with self.lock:
            return handler(db, cmd) | {"ok": 1.0}

    # -- commands --------------------------------------------------------------------------------------
    def cmd_hello(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"ismaster": True, "isWritablePrimary": True, "helloOk": True, "maxBsonObjectSize": 16 << 20,
                "maxMessageSizeBytes": 48_000_000, "maxWriteBatchSize": 100_000,
                "localTime": datetime.now(timezone.utc), "logicalSessionTimeoutMinutes": 30, "connectionId": 1,
                "minWireVersion": 0, "maxWireVersion": 17, "readOnly": False}

    cmd_ismaster = cmd_hello

    def cmd_ping(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    cmd_endsessions = cmd_ping

    def cmd_insert(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        coll, n, errors = self.coll(db, cmd["insert"]), 0, []
        for index, doc in enumerate(cmd.get("documents", [])):
            error = coll.insert(doc)
            if error is None:
                n += 1
            else:
                errors.append({"index": index, "code": 11000, "errmsg": error})
                if cmd.get("ordered", True):
                    break
        return {"n": n} | ({"writeErrors": errors} if errors else {})

    def cmd_update(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        coll, n, modified, upserted = self.coll(db, cmd["update"]), 0, 0, []
        for index, spec in enumerate(cmd.get("updates", [])):
            found = [d for d in coll.docs.values() if matches(d, spec["q"])]
            if not spec.get("multi"):
                found = found[:1]
            update = spec["u"]
            operators = bool(update) and all(k.startswith("$") for k in update)
            if operators and set(update) - {"$set"}:
                raise CommandError(2, "BadValue", f"update operators {sorted(update)}: only $set (test server)")
            if not found and spec.get("upsert"):
                base = {k: v for k, v in spec["q"].items() if not k.startswith("$") and not isinstance(v, dict)}
                doc = base | (update.get("$set", {}) if operators else update)
                doc.setdefault("_id", base.get("_id", bson.ObjectId()))
                coll.insert(doc)
                upserted.append({"index": index, "_id": doc["_id"]})
                n += 1
                continue
            for doc in found:
                new = doc | update["$set"] if operators else {"_id": doc["_id"]} | update
                error = coll._violates(new, ignore=doc["_id"])
                if error is not None:
                    return {"n": n, "nModified": modified, "writeErrors": [{"index": index, "code": 11000, "errmsg": error}]}
                modified += new != doc
                coll.docs[doc["_id"]] = new
                n += 1
        return {"n": n, "nModified": modified} | ({"upserted": upserted} if upserted else {})

    def cmd_delete(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        coll, n = self.coll(db, cmd["delete"]), 0
        for spec in cmd.get("deletes", []):
            found = [k for k, d in coll.docs.items() if matches(d, spec["q"])]
            for key in found[:1] if spec.get("limit") == 1 else found:
                del coll.docs[key]
                n += 1
        return {"n": n}

    def _cursor(self, ns: str, docs: list[dict[str, Any]], first: str, single: bool = False) -> dict[str, Any]:
        batch, size = [], 0
        while docs and (not batch or size + len(bson.encode(docs[0])) <= BATCH_BYTES):
            size += len(bson.encode(docs[0]))
            batch.append(docs.pop(0))
        cursor_id = 0
        if docs and not single:
            cursor_id, self.next_cursor = self.next_cursor, self.next_cursor + 1
            self.cursors[cursor_id] = (ns, docs)
        return {"cursor": {first: batch, "id": bson.Int64(cursor_id), "ns": ns}}

    def cmd_find(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        docs = [d for d in self.coll(db, cmd["find"]).docs.values() if matches(d, cmd.get("filter") or {})]
        for field, direction in reversed(list((cmd.get("sort") or {}).items())):
            docs.sort(key=lambda d: _sort_key(next(_values(d, field.split(".")), _MISSING)), reverse=direction < 0)
        docs = docs[cmd.get("skip", 0):]
        if cmd.get("limit"):
            docs = docs[:abs(cmd["limit"])]
        projection = cmd.get("projection") or {}
        if projection:
            include = {k for k, v in projection.items() if v}
            if include:
                docs = [{k: v for k, v in d.items() if k in include or (k == "_id" and projection.get("_id", 1))}
                        for d in docs]
            else:
                docs = [{k: v for k, v in d.items() if k not in projection} for d in docs]
        return self._cursor(f"{db}.{cmd['find']}", [dict(d) for d in docs], "firstBatch", bool(cmd.get("singleBatch")))

    def cmd_getmore(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        ns, docs = self.cursors.pop(int(cmd["getMore"]), ("", []))
        if not ns:
            raise CommandError(43, "CursorNotFound", f"cursor id {cmd['getMore']} not found")
        return self._cursor(ns, docs, "nextBatch")

    def cmd_killcursors(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        for cursor in cmd.get("cursors", []):
            self.cursors.pop(int(cursor), None)
        return {"cursorsKilled": cmd.get("cursors", [])}

    def cmd_createindexes(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        coll = self.coll(db, cmd["createIndexes"])
        before = len(coll.indexes)
        for spec in cmd["indexes"]:
            if all(index["name"] != spec["name"] for index in coll.indexes):
                coll.indexes.append({"v": 2} | spec)
        return {"numIndexesBefore": before, "numIndexesAfter": len(coll.indexes)}

    def cmd_listindexes(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        return self._cursor(f"{db}.{cmd['listIndexes']}", list(self.coll(db, cmd["listIndexes"]).indexes), "firstBatch")

    def cmd_drop(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        self.dbs.get(db, {}).pop(cmd["drop"], None)
        return {}


def _cstring(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)
    return data[at:end].decode(), end + 1


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        sock: socket.socket = self.request
        self.server.open.add(sock)
        try:
            self._serve(sock)
        finally:
            self.server.open.discard(sock)

    def _serve(self, sock: socket.socket) -> None:
        while True:
            head = self._read(sock, 16)
            if head is None:
                return
            length, request_id, _, opcode = _HEADER.unpack(head)
            body = self._read(sock, length - 16)
            if body is None:
                return
            if opcode == OP_QUERY:
                _, at = struct.unpack_from("<i", body)[0], 4
                collection, at = _cstring(body, at)
                at += 8  # numberToSkip, numberToReturn
                query = bson.decode(body[at:at + struct.unpack_from("<i", body, at)[0]], _CODEC)
                answer = self._answer(collection.split(".")[0], query)
                payload = struct.pack("<iqii", 0, 0, 0, 1) + bson.encode(answer)
                sock.sendall(_HEADER.pack(16 + len(payload), 0, request_id, OP_REPLY) + payload)
            elif opcode == OP_MSG:
                flags = struct.unpack_from("<I", body)[0]
                cmd, at, end = {}, 4, len(body) - (4 if flags & 1 else 0)
                while at < end:
                    kind, at = body[at], at + 1
                    size = struct.unpack_from("<i", body, at)[0]
                    if kind == 0:
                        cmd = bson.decode(body[at:at + size], _CODEC) | cmd
                    else:
                        name, start = _cstring(body, at + 4)
                        cmd[name] = bson.decode_all(body[start:at + size], _CODEC)
                    at += size
                answer = self._answer(cmd.pop("$db", "admin"), cmd)
                if not flags & 2:  # moreToCome: no reply wanted
                    payload = struct.pack("<IB", 0, 0) + bson.encode(answer)
                    sock.sendall(_HEADER.pack(16 + len(payload), 0, request_id, OP_MSG) + payload)
            else:
                return  # an opcode this server does not speak: hang up, as mongod does

    def _answer(self, db: str, cmd: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.server.store.run(db, cmd)
        except CommandError as exc:
            return {"ok": 0.0, "errmsg": str(exc), "code": exc.code, "codeName": exc.name}

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            try:
                chunk = sock.recv(min(left, 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    store: Store
    open: set[socket.socket]


class MongoWireServer:
    """The server on 127.0.0.1 (``port`` 0: an ephemeral one); ``url`` once started."""

    def __init__(self, port: int = 0, store: Store | None = None) -> None:
        self.store = store if store is not None else Store()
        self._port = port
        self._server: _Server | None = None

    def start(self) -> "MongoWireServer":
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.store = self.store
        self._server.open = set()
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self._port}"

    def stop(self) -> None:
        """Stops listening and closes every connection (clients then see the server go away)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for sock in list(self._server.open):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server = None

    def __enter__(self) -> "MongoWireServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
