"""The result store (stoq.store) and its migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Iterator

import orjson
import pytest
from sqlalchemy import create_engine, func, select, text

from helpers import PG_URL, pg_admin
from stoq import model
from stoq import store as store_mod
from stoq import tables as tables_mod
from stoq.jsonb import apply_hint, order_hint
from stoq.model import PayloadRecord, ScanErrorEntry
from stoq.store import HEAD_REVISION, NotMigrated, Store, StoreError, upgrade

STOQ_TABLES = ("api_tokens", "connector_outbox", "dirmon_ledger", "scan_ledger", "scan_errors", "plugin_results", "scan_payloads",
               "payloads", "scans", "alembic_version")


# ------------------------------------------------------------------------------------------ fixtures


def _drop_stoq_tables(conn, schema: str) -> None:
    for table in STOQ_TABLES:
        conn.execute(text(f'DROP TABLE IF EXISTS "{schema}"."{table}" CASCADE'))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a schema of its own, emptied before and dropped after,
    so the tests neither see nor touch anything else in the shared ``test`` database."""
    admin = pg_admin()
    schema = f"stoq_test_store_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        _drop_stoq_tables(conn, schema)
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            _drop_stoq_tables(conn, schema)
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated, empty database URL on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'stoq.db'}"
        assert upgrade(url) == HEAD_REVISION
        yield url
    else:
        url = request.getfixturevalue("pg_url")
        assert upgrade(url) == HEAD_REVISION
        yield url


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    st = Store.open(db_url, auto_migrate=False)
    try:
        yield st
    finally:
        st.close()


# ----------------------------------------------------------------------------------------- documents

def _hashes(tag: str) -> dict[str, str]:
    import hashlib

    data = tag.encode()
    return {"md5": hashlib.md5(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest()}


ODD_META = {
    # Keys in an order JSONB would not keep (it sorts by length, then bytes), odd keys and values.
    "zzz_long_key_first": 1,
    "b": "b",
    "": "empty key",
    "ключ": "значение",
    "🔑": "emoji 🚀 and rtl שלום and combining é",
    "text_rule": model.text(b"nul\x00 and bad \xff\xfe bytes"),
    "surrogate_name": model.text("caf\udce9.txt"),
    "escapes": "quote \" backslash \\ tab \t newline \n \u2028 \u2029",
    "numbers": [0, -1, 2**63 - 1, -(2**63), 1.5, -0.0, 1e16, 1.5e20, 1e-7, 123.0, 0.1, 1e300],
    "bools": [True, False, None],
    "nested": {"z": {"y": {"x": [{"b": 1, "a": 2}, [], {}]}}, "a": []},
    "big_int_as_text": model.clean(2**70),
}


def realistic_document(scan_id: str | None = None, date: str = "2024-05-01T12:34:56.789012Z",
                       root_tag: str = "root.zip") -> dict[str, Any]:
    """A zip holding a document (which holds a script), a duplicate of that document, and an exe."""
    root = PayloadRecord(
        payload_id="0", parent_id=None, depth=0, filename="sample ü 📦.zip", extracted_by=None,
        meta={"source_path": "/data/in/sample ü 📦.zip", "mtime": 1714567890.5, "size_hint": 4096},
        size=4096, mime="application/zip", **_hashes(root_tag),
        workers={"yara": {"matches": [{"rule": "zip_with_exe", "tags": ["archive"], "meta": {"score": 7}}]},
                 "decompress": {"children": 3, "method": "deflate"}},
        flags=["archive"])
    doc = PayloadRecord(
        payload_id="0.0", parent_id="0", depth=1, filename="report.docx", extracted_by="decompress",
        meta=ODD_META, size=1234, mime="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        **_hashes("report.docx"),
        workers={"yara": {"matches": []}, "peinfo": None, "oletools": ["macro", {"k": 1.0}], "strings": "x"},
        flags=[])
    script = PayloadRecord(
        payload_id="0.0.0", parent_id="0.0", depth=2, filename=None, extracted_by="decompress",
        meta={}, size=0, mime="text/plain", **_hashes("script.vbs"),
        workers={"yara": 42, "z_last": True, "a_first": 3.25}, flags=["truncated", "max_depth"])
    duplicate = PayloadRecord(
        payload_id="0.1", parent_id="0", depth=1, filename="copy of report.docx", extracted_by="decompress",
        meta={"note": "same bytes as 0.0"}, size=1234, mime=doc.mime, **_hashes("report.docx"),
        duplicate_of="0.0")
    exe = PayloadRecord(
        payload_id="0.2", parent_id="0", depth=1, filename="setup.exe", extracted_by="decompress",
        meta={"compressed_size": 900}, size=5000, mime="application/x-dosexec", **_hashes("setup.exe"),
        workers={"peinfo": {"machine": "AMD64", "timestamp": 1700000000,
                            "sections": [{"name": ".text", "virtual_address": 4096, "entropy": 6.1},
                                         {"name": ".rsrc", "virtual_address": 8192, "entropy": 7.9}]}},
        flags=["pe"])
    errors = [ScanErrorEntry("0.2", "yara", "timeout", "exceeded 60 s"),
              ScanErrorEntry("0.0", "oletools", "error", "ValueError: bad stream «x» (at olefile.py:1)"),
              ScanErrorEntry("0.2", "peinfo", "crash", "worker died (signal 9)")]
    return model.document(scan_id or uuid.uuid4().hex, date,
                          {"kind": "file", "path": "/data/in/sample ü 📦.zip", "user": "ana", "tags": ["t1"]},
                          [root, doc, script, duplicate, exe], errors)


def small_document(i: int, scan_id: str | None = None) -> dict[str, Any]:
    """What the embedded scanner saves most: one payload, two plugin results."""
    rec = PayloadRecord(
        payload_id="0", parent_id=None, depth=0, filename=f"file{i}.txt", extracted_by=None,
        meta={"path": f"/in/file{i}.txt"}, size=100 + i, mime="text/plain", **_hashes(f"small {i}"),
        workers={"yara": {"matches": []}, "hash": {"ssdeep": "3:abc:def"}}, flags=[])
    return model.document(scan_id or f"scan-{i:08d}", "2024-05-01T00:00:00Z", {"kind": "file", "path": f"/in/file{i}.txt"},
                          [rec], [])


def counts(st: Store) -> dict[str, int]:
    with st.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in store_mod.TABLES}


# ------------------------------------------------------------------------------------------- tests

def test_round_trip_is_exact(store):
    doc = realistic_document()
    expected = orjson.dumps(doc)
    store.save([doc])
    got = store.get(doc["scan_id"])
    assert got == doc
    # Byte-for-byte: key order at every level, float spellings (1e+16, -0.0), the date string.
    assert orjson.dumps(got) == expected
    assert list(got["results"][1]["meta"]) == list(ODD_META)
    assert list(got["results"][2]["workers"]) == ["yara", "z_last", "a_first"]
    assert [r["payload_id"] for r in got["results"]] == ["0", "0.0", "0.0.0", "0.1", "0.2"]
    assert store.get("no-such-scan") is None


def test_save_is_idempotent(store):
    doc = realistic_document()
    store.save([doc])
    once = counts(store)
    assert once == {"scans": 1, "payloads": 4, "scan_payloads": 5, "plugin_results": 10, "scan_errors": 3}
    store.save([doc])
    store.save([doc, orjson.loads(orjson.dumps(doc))])  # a redelivered batch holding it twice
    assert counts(store) == once
    assert orjson.dumps(store.get(doc["scan_id"])) == orjson.dumps(doc)


def test_batch_and_shared_payloads(store):
    docs = [small_document(i) for i in range(50)] + [realistic_document(root_tag=f"zip {i}") for i in range(3)]
    store.save(docs)
    c = counts(store)
    # The three zips share report.docx, script.vbs and setup.exe: stored once each.
    assert c["scans"] == 53 and c["scan_payloads"] == 50 + 15 and c["payloads"] == 50 + 3 + 3
    for d in docs:
        assert orjson.dumps(store.get(d["scan_id"])) == orjson.dumps(d)


def test_find_by_sha256_and_scan_id(store):
    newer = realistic_document("scan-newer", "2024-06-01T00:00:00Z", root_tag="zip B")
    older = realistic_document("scan-older", "2024-05-31T23:59:59.5Z", root_tag="zip A")
    store.save([newer])
    store.save([older])
    child = newer["results"][1]["sha256"]  # report.docx, a child in both
    assert child == older["results"][1]["sha256"]
    assert [d["scan_id"] for d in store.find(child)] == ["scan-older", "scan-newer"]
    assert [d["scan_id"] for d in store.find(child.upper())] == ["scan-older", "scan-newer"]
    assert store.find(child) == [older, newer]
    root = newer["results"][0]["sha256"]
    assert [d["scan_id"] for d in store.find(root)] == ["scan-newer"]
    assert store.find("scan-older") == [older]
    assert store.find("0" * 64) == []
    assert store.find("nothing") == []


def test_concurrent_overlapping_saves(store):
    """Writers whose batches share payloads, in opposite orders, neither deadlock nor duplicate."""
    docs = [realistic_document(f"scan-{i}", root_tag=f"zip {i}") for i in range(12)]
    failures: list[BaseException] = []

    def worker(batch: list[dict[str, Any]]) -> None:
        try:
            for _ in range(3):
                store.save(batch)
        except BaseException as exc:  # pragma: no cover - the failure is the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in (docs, docs[::-1], docs[3:9])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert counts(store) == {"scans": 12, "payloads": 15, "scan_payloads": 60, "plugin_results": 120,
                             "scan_errors": 36}


def test_invalid_document_is_rejected(store):
    doc = realistic_document()
    del doc["results"][0]["mime"]
    with pytest.raises(StoreError, match="mime"):
        store.save([doc])
    with pytest.raises(StoreError):
        store.save([{"scan_id": "x"}])
    assert counts(store)["scans"] == 0


def test_failed_batch_saves_nothing(store):
    good = small_document(1)
    bad = small_document(2)
    bad["results"][0]["size"] = "not a number" if store.engine.dialect.name == "postgresql" else None
    with pytest.raises(StoreError):
        store.save([good, bad])
    assert counts(store)["scans"] == 0


def test_schema_matches_migrations(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                tables_mod.Base.metadata)
    assert diff == []


def test_head_revision_constant_matches_scripts():
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(store_mod.alembic_config()).get_current_head() == HEAD_REVISION


def test_upgrade_is_repeatable(db_url):
    assert upgrade(db_url) == HEAD_REVISION
    assert upgrade(db_url) == HEAD_REVISION


# --------------------------------------------------------------------------------------- migration

@pytest.mark.postgres
def test_unmigrated_server_database_raises(pg_url):
    with pytest.raises(NotMigrated, match=r"run `stoq db upgrade` \(or `python manage.py db upgrade`\)"):
        Store.open(pg_url)
    assert upgrade(pg_url) == HEAD_REVISION
    Store.open(pg_url).close()


@pytest.mark.postgres
def test_outdated_server_database_raises(pg_url):
    upgrade(pg_url)
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    engine.dispose()
    with pytest.raises(NotMigrated, match="0000"):
        Store.open(pg_url)


@pytest.mark.postgres
def test_server_database_can_auto_migrate(pg_url):
    with Store.open(pg_url, auto_migrate=True) as st:
        st.save([small_document(1)])
        assert st.get("scan-00000001") == small_document(1)


def test_sqlite_is_created_and_migrated_on_first_use(tmp_path):
    path = tmp_path / "deep" / "er" / "stoq.db"
    with Store.open(f"sqlite:///{path}") as st:
        st.save([small_document(1)])
    assert path.exists()
    with Store.open(f"sqlite:///{path}", auto_migrate=False) as st:
        assert st.get("scan-00000001") == small_document(1)
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_sqlite_without_auto_migrate_raises(tmp_path):
    with pytest.raises(NotMigrated, match="stoq db upgrade"):
        Store.open(f"sqlite:///{tmp_path / 'empty.db'}", auto_migrate=False)


def test_concurrent_first_open_of_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with Store.open(url) as st:
                st.save([small_document(i)])
        except BaseException as exc:  # pragma: no cover - the failure is the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with Store.open(url) as st:
        assert counts(st)["scans"] == 4


def test_bundled_sqlite_schema_is_what_the_migrations_create(tmp_path):
    """``sqlite_head.sql`` (the CLI's fast first-use path) must be regenerated with every migration."""
    from stoq.migrations import SQLITE_HEAD

    upgrade(f"sqlite:///{tmp_path / 'alembic.db'}")
    assert SQLITE_HEAD.read_text(encoding="utf-8") == store_mod.dump_sqlite_schema(tmp_path / "alembic.db")


def _sqlite_master(path) -> list[tuple[Any, ...]]:
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid").fetchall()
    finally:
        db.close()


def test_fast_sqlite_creation_equals_alembic(tmp_path):
    from stoq.cli.storeload import create_sqlite_at_head, sqlite_at_head

    upgrade(f"sqlite:///{tmp_path / 'alembic.db'}")
    fast = tmp_path / "new" / "dir" / "fast.db"
    url = f"sqlite:///{fast}"
    assert not sqlite_at_head(url)
    assert create_sqlite_at_head(url) is True
    assert sqlite_at_head(url)
    assert _sqlite_master(fast) == _sqlite_master(tmp_path / "alembic.db")
    assert {name for kind, name, _, _ in _sqlite_master(fast) if kind == "table"} == set(STOQ_TABLES)
    # Alembic finds nothing to do, and the store works.
    assert upgrade(url) == HEAD_REVISION
    with Store.open(url, auto_migrate=False) as st:
        st.save([small_document(1)])
        assert st.get("scan-00000001") == small_document(1)
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # An existing store is never touched again.
    assert create_sqlite_at_head(url) is False


def test_fast_sqlite_creation_leaves_other_cases_to_alembic(tmp_path):
    from stoq.cli.storeload import create_sqlite_at_head

    (tmp_path / "other.db").write_bytes(b"not a database, and not empty")
    assert create_sqlite_at_head(f"sqlite:///{tmp_path / 'other.db'}") is False
    assert (tmp_path / "other.db").read_bytes() == b"not a database, and not empty"
    (tmp_path / "afile").write_text("x")
    assert create_sqlite_at_head(f"sqlite:///{tmp_path / 'afile' / 'stoq.db'}") is False
    assert create_sqlite_at_head("sqlite://") is False
    assert create_sqlite_at_head("sqlite:///:memory:") is False
    assert create_sqlite_at_head(f"sqlite:///{tmp_path / 'q.db'}?timeout=5") is False
    assert not (tmp_path / "q.db").exists()
    assert create_sqlite_at_head(PG_URL) is False


def test_fast_sqlite_creation_races(tmp_path):
    """Processes creating the same new store at once: exactly one creates it, the others find it."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'race.db'}"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        created = pool.map(_create, [url] * 4)
    assert sum(created) == 1
    assert _sqlite_master(tmp_path / "race.db") == _sqlite_master_of_new(tmp_path)


def _create(url: str) -> bool:
    from stoq.cli.storeload import create_sqlite_at_head

    return create_sqlite_at_head(url)


def _sqlite_master_of_new(tmp_path) -> list[tuple[Any, ...]]:
    upgrade(f"sqlite:///{tmp_path / 'reference.db'}")
    return _sqlite_master(tmp_path / "reference.db")


def _all_rows(path) -> dict[str, list[tuple[Any, ...]]]:
    import sqlite3

    from stoq.rows import TABLE_NAMES

    db = sqlite3.connect(path)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLE_NAMES}
    finally:
        db.close()


def test_the_clis_sqlite_writer_writes_the_stores_rows(tmp_path):
    """SqliteWriter (no SQLAlchemy) and Store.save write identical rows; the Store reads them back exactly."""
    from stoq.cli.storeload import create_sqlite_at_head
    from stoq.sqlitedb import SqliteWriter

    off_contract = realistic_document("scan-r2")  # a date with an offset, as no stoq document has: stored alike
    off_contract["date"] = "2024-05-01T14:34:56+02:00"
    docs = [realistic_document("scan-r1"), off_contract, *(small_document(i) for i in range(5))]
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as st:
        st.save(docs)
    assert create_sqlite_at_head(f"sqlite:///{tmp_path / 'writer.db'}")
    writer = SqliteWriter(str(tmp_path / "writer.db"))
    writer.save(docs)
    writer.save(docs[:3])  # idempotent
    writer.close()
    expected = _all_rows(tmp_path / "store.db")
    assert _all_rows(tmp_path / "writer.db") == expected
    assert {t: len(rows) for t, rows in expected.items()} == {
        "scans": 7, "payloads": 4 + 5, "scan_payloads": 2 * 5 + 5, "plugin_results": 2 * (2 + 4 + 3 + 1) + 5 * 2,
        "scan_errors": 2 * 3}
    with Store.open(f"sqlite:///{tmp_path / 'writer.db'}", auto_migrate=False) as st:
        assert [st.get(d["scan_id"]) for d in docs] == docs


def test_the_clis_sqlite_writer_saves_all_or_nothing(tmp_path):
    from stoq.cli.storeload import create_sqlite_at_head
    from stoq.sqlitedb import SqliteWriter

    assert create_sqlite_at_head(f"sqlite:///{tmp_path / 'w.db'}")
    writer = SqliteWriter(str(tmp_path / "w.db"))
    bad = small_document(2)
    del bad["results"][0]["mime"]
    with pytest.raises(StoreError, match=r"results\[0\] of scan scan-00000002 does not have the scan-document shape"):
        writer.save([small_document(1), bad])
    writer.close()
    assert {t: len(rows) for t, rows in _all_rows(tmp_path / "w.db").items()} == dict.fromkeys(
        ("scans", "payloads", "scan_payloads", "plugin_results", "scan_errors"), 0)


def test_bad_url_is_a_store_error(tmp_path):
    with pytest.raises(StoreError):
        Store.open("nosuchdialect://x/y")


# ------------------------------------------------------------------------------------- JSONB hints

def _as_jsonb(value: Any) -> Any:
    """What PostgreSQL JSONB gives back: objects key-sorted by (byte length, bytes), integral floats
    spelled with an exponent turned into integers, -0.0 into 0.0."""
    if isinstance(value, dict):
        return {k: _as_jsonb(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    if isinstance(value, list):
        return [_as_jsonb(v) for v in value]
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1e16:
            return int(value)
        return 0.0 if value == 0 else value
    return value


@pytest.mark.parametrize("value", [ODD_META, realistic_document(), {}, [], 1e16, -0.0, None, "s",
                                   {"ab": 1, "a": {"d": 1, "c": 2}}])
def test_order_hint_restores_what_jsonb_forgets(value):
    hint = order_hint(value)
    restored = apply_hint(_as_jsonb(value), orjson.loads(orjson.dumps(hint)))
    assert orjson.dumps(restored) == orjson.dumps(value)


def test_order_hint_is_none_for_canonical_values():
    assert order_hint({"a": 1, "b": [1, 2.5], "cc": {"x": None}}) is None


# -------------------------------------------------------------------------------------- performance

def test_save_cost_per_small_document(tmp_path, capsys):
    """Measured, not asserted: the embedded scanner saves ~50-200 small documents at a time."""
    with Store.open(f"sqlite:///{tmp_path / 'perf.db'}") as st:
        st.save([small_document(-1)])  # warm up (connection, caches)
        # Random scan ids, as the engine makes them (uuid4): they land all over the indexes.
        docs = [small_document(i, str(uuid.uuid4())) for i in range(1000)]
        start = time.perf_counter()
        for i in range(0, len(docs), 100):
            st.save(docs[i:i + 100])
        elapsed = time.perf_counter() - start
        assert counts(st)["scans"] == 1001
        start = time.perf_counter()
        for d in docs[:200]:
            st.get(d["scan_id"])
        read = (time.perf_counter() - start) / 200
    with capsys.disabled():
        print(f"\n[store] SQLite save: {elapsed / len(docs) * 1e6:.1f} us per small document "
              f"(1000 documents in batches of 100, {elapsed * 1e3:.1f} ms total); "
              f"get: {read * 1e6:.0f} us per document")
