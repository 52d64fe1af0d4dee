"""The content-addressed archives: pack files with a SQLite index, a file per payload, PostgreSQL rows."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any, Iterator

import psycopg2
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from helpers import PG_URL, pg_admin
from stoq.archive import ArchiveError, DirectoryArchive, PackArchive, open_archive, put_where, read_from
from stoq.archive_pg import PostgresArchive
from stoq.config import Settings


def blob(i: int) -> tuple[str, bytes]:
    data = hashlib.sha512(str(i).encode()).digest() * (i + 1)
    return hashlib.sha256(data).hexdigest(), data


@pytest.mark.parametrize("kind", ["pack", "directory"])
def test_put_get_roundtrip_and_dedup(tmp_path: Path, kind: str) -> None:
    archive = open_archive(kind, tmp_path)
    items = [blob(i) for i in range(50)]
    for sha, data in items:
        archive.put(sha, data)
        archive.put(sha, data)  # a second put of the same payload stores nothing more
    archive.flush()
    for sha, data in items:
        assert archive.get(sha) == data
    with pytest.raises(ArchiveError):
        archive.get("0" * 64)
    if kind == "pack":
        packed = sum(p.stat().st_size for p in (tmp_path / "packs").iterdir())
        assert packed == sum(PackArchive.HEADER + len(d) for _, d in items)
    archive.close()


def test_pack_detects_damage_and_reindexes_a_lost_index(tmp_path: Path) -> None:
    archive = PackArchive(tmp_path)
    items = [blob(i) for i in range(10)]
    for sha, data in items:
        archive.put(sha, data)
    archive.close()
    (tmp_path / "index.sqlite").unlink()
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    fresh = PackArchive(tmp_path)
    assert not fresh.exists(items[0][0])
    assert fresh.reindex() == 10
    assert [fresh.get(sha) for sha, _ in items] == [d for _, d in items]
    pack = next((tmp_path / "packs").iterdir())
    raw = bytearray(pack.read_bytes())
    raw[PackArchive.HEADER + 3] ^= 0xFF  # flip a byte of the first payload
    pack.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="damaged"):
        fresh.get(items[0][0])


def test_a_located_payload_is_read_by_its_place_before_its_index_row_exists(tmp_path: Path) -> None:
    writer = PackArchive(tmp_path)
    writer.FLUSH_SECONDS = 3600  # no index row until close()
    sha, data = blob(3)
    where = writer.put_located(sha, data)
    assert writer.put_located(sha, data) == where  # a second put: the same place, nothing appended
    assert sum(p.stat().st_size for p in (tmp_path / "packs").iterdir()) == PackArchive.HEADER + len(data)
    reader = PackArchive(tmp_path)  # another reader, as a worker process has
    assert not reader.exists(sha)  # the writer has not written the index row yet
    assert reader.read_at(where, sha) == data == reader.read_at(where)
    with pytest.raises(ArchiveError, match="damaged"):
        reader.read_at(where, blob(4)[0])
    with pytest.raises(ArchiveError, match="truncated"):
        reader.read_at((where[0], where[1], len(data) + 1))
    with pytest.raises(ArchiveError, match="not a pack name"):
        reader.read_at(("../index.sqlite", 0, 16))
    writer.close()
    assert reader.get(sha) == data  # the row is there once the writer closed
    reader.close()


def test_a_reference_carries_the_place_of_a_packed_payload_and_readers_use_it(tmp_path: Path) -> None:
    """What the cluster's references carry: a pack's place (JSON: a list), read with no index look-up;
    other archives give no place and are read by sha256."""
    data = b"carried by its place" * 10
    sha256 = hashlib.sha256(data).hexdigest()
    writer = PackArchive(tmp_path / "packs")
    at = put_where(writer, sha256, data)
    assert at is not None and at[1:] == [len(PackArchive.MAGIC) + 32 + 8, len(data)]
    reader = PackArchive(tmp_path / "packs")  # another process's view: the index row is not written yet
    assert not reader.exists(sha256)
    assert read_from(reader, sha256, at) == (data, True)  # known: the record's header names sha256
    with pytest.raises(ArchiveError):
        read_from(reader, sha256, None)  # by sha256, the index is needed
    writer.flush()
    assert read_from(reader, sha256, None) == (data, False)  # the caller hashes it
    directory = DirectoryArchive(tmp_path / "dir")
    assert put_where(directory, sha256, data) is None
    assert read_from(directory, sha256, None) == (data, False)


def test_read_record_refuses_a_place_whose_header_names_another_payload(tmp_path: Path) -> None:
    archive = PackArchive(tmp_path)
    (sha_a, a), (sha_b, b) = blob(1), blob(2)
    place_a, place_b = archive.put_located(sha_a, a), archive.put_located(sha_b, b)
    assert archive.read_record(place_a, sha_a) == a and archive.read_record(place_b, sha_b) == b
    with pytest.raises(ArchiveError, match="is not at"):
        archive.read_record(place_b, sha_a)  # b's record, a's name
    with pytest.raises(ArchiveError, match="is not at"):
        archive.read_record((place_a[0], place_a[1], place_a[2] - 1), sha_a)  # a length the header does not say
    with pytest.raises(ArchiveError, match="is not at"):
        archive.read_record((place_b[0], place_b[1] + 1, place_b[2]), sha_b)  # inside a record
    with pytest.raises(ArchiveError, match="not a record"):
        archive.read_record((place_a[0], 0, place_a[2]), sha_a)
    with pytest.raises(ArchiveError, match="not a sha256"):
        archive.read_record(place_a, "../x")


@pytest.mark.parametrize("many", [False, True])
def test_a_damaged_record_found_in_the_index_is_written_again_not_handed_out(tmp_path: Path, many: bool) -> None:
    """A writer hands out only places that hold the bytes it was given: readers trust them."""
    sha, data = blob(5)
    first = PackArchive(tmp_path)
    old = first.put_located(sha, data)
    first.close()
    pack = tmp_path / "packs" / old[0]
    raw = bytearray(pack.read_bytes())
    raw[old[1] + 7] ^= 0xFF  # rot inside the bytes; the header still names sha
    pack.write_bytes(bytes(raw))
    archive = PackArchive(tmp_path)
    new = archive.put_many_located([(sha, data)])[0] if many else archive.put_located(sha, data)
    assert new != old and archive.read_record(new, sha) == data
    archive.close()
    assert PackArchive(tmp_path).get(sha) == data  # the index row names the new record
    again = PackArchive(tmp_path)
    assert again.put_located(sha, data) == new  # sound now: handed out, not appended
    again.close()
    assert sum(p.stat().st_size for p in (tmp_path / "packs").iterdir()) == 2 * (PackArchive.HEADER + len(data))


def test_put_many_located_appends_each_new_payload_once(tmp_path: Path) -> None:
    a, b, c = blob(1), blob(2), blob(3)
    first = PackArchive(tmp_path)
    first.put(*a)
    first.close()  # a is in the index now
    archive = PackArchive(tmp_path)
    archive.FLUSH_EVERY = 1  # index rows written after every append: a repeated payload is still appended once
    items = [a, b, b, c, a]
    places = archive.put_many_located(items)
    assert places[1] == places[2] and places[0] == places[4]
    assert [archive.read_at(where, sha) for where, (sha, _) in zip(places, items)] == [data for _, data in items]
    archive.close()
    assert sum(p.stat().st_size for p in (tmp_path / "packs").iterdir()) == sum(
        PackArchive.HEADER + len(data) for _, data in (a, b, c))
    assert [PackArchive(tmp_path).get(sha) for sha, _ in (a, b, c)] == [a[1], b[1], c[1]]


def _writer(root: str, start: int) -> None:
    archive = PackArchive(root)
    for i in range(start, start + 40):
        archive.put(*blob(i))
    archive.close()


def test_pack_archive_is_shared_by_processes_and_safe_across_fork(tmp_path: Path) -> None:
    parent = PackArchive(tmp_path)
    parent.put(*blob(999))  # the parent holds an open pack before forking
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in (0, 20)]  # overlapping payloads
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    parent.close()
    reader = PackArchive(tmp_path)
    for i in list(range(60)) + [999]:
        sha, data = blob(i)
        assert reader.get(sha) == data
    assert len(list((tmp_path / "packs").iterdir())) == 3  # one pack per writing process


def test_directory_archive_layout_and_bad_keys(tmp_path: Path) -> None:
    archive = DirectoryArchive(tmp_path)
    sha, data = blob(1)
    archive.put(sha, data)
    assert (tmp_path / sha[:2] / sha[2:4] / sha).read_bytes() == data
    assert not [p for p in (tmp_path / sha[:2] / sha[2:4]).iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(ArchiveError, match="not a sha256"):
        archive.put("../../etc/passwd", b"x")
    for bad in (sha + "\n", sha.upper(), sha[:-1]):  # a name is exactly 64 lower-case hex digits
        with pytest.raises(ArchiveError, match="not a sha256"):
            archive.put(bad, data)
    archive.delete(sha)
    assert not archive.exists(sha)
    assert os.listdir(tmp_path / sha[:2] / sha[2:4]) == []


# -- the PostgreSQL archive ---------------------------------------------------------------------


@pytest.fixture
def pg_archive_url() -> Iterator[str]:
    """The URL of a database of its own (created empty, dropped after), so each test starts with no
    ``stoq_archive`` table and touches nothing else."""
    name = f"stoq_archive_test_{os.getpid()}"
    admin = pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pg_query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Runs one statement on a connection of its own (committed); its rows, if any."""
    conn = psycopg2.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def pg_rows(url: str) -> dict[str, tuple[bytes, int]]:
    """sha256 -> (content, size) of every row."""
    rows = pg_query(url, "SELECT sha256, content, size FROM stoq_archive")
    assert len({sha for sha, _, _ in rows}) == len(rows)
    return {sha: (bytes(content), size) for sha, content, size in rows}


def payloads() -> list[bytes]:
    """Empty, one byte, small ones, one of exactly 5 MiB: all distinct."""
    five_mib = b"".join(hashlib.sha512(i.to_bytes(4, "big")).digest() for i in range((5 << 20) // 64))
    assert len(five_mib) == 5 << 20
    return [b"", b"\x00", b"stoq"] + [blob(i)[1] for i in range(10)] + [five_mib]


@pytest.mark.postgres
def test_postgres_archive_round_trip(pg_archive_url: str) -> None:
    archive = open_archive("postgres", pg_archive_url)
    assert isinstance(archive, PostgresArchive) and archive.url == pg_archive_url  # the URL, unchanged
    archive.prepare()
    items = payloads()
    for data in items:
        archive.put(hashlib.sha256(data).hexdigest(), data)
    archive.close()  # flushes

    rows = pg_rows(pg_archive_url)
    assert rows == {hashlib.sha256(d).hexdigest(): (d, len(d)) for d in items}
    reader = PostgresArchive(pg_archive_url)
    for data in items:
        sha = hashlib.sha256(data).hexdigest()
        assert reader.exists(sha)
        got = reader.get(sha)
        assert type(got) is bytes and got == data and hashlib.sha256(got).hexdigest() == sha
    reader.delete(hashlib.sha256(b"stoq").hexdigest())
    assert not reader.exists(hashlib.sha256(b"stoq").hexdigest())
    assert len(pg_rows(pg_archive_url)) == len(items) - 1
    reader.close()


@pytest.mark.postgres
def test_postgres_archive_buffers_until_flush_and_serves_pending_payloads(pg_archive_url: str) -> None:
    archive = PostgresArchive(pg_archive_url)
    archive.prepare()
    sha, data = blob(3)
    archive.put(sha, data)
    assert pg_rows(pg_archive_url) == {}  # pending: not written yet
    assert archive.exists(sha)
    assert archive.get(sha) == data  # from the buffer
    archive.flush()
    assert pg_rows(pg_archive_url) == {sha: (data, len(data))}

    many = [blob(i) for i in range(100, 100 + PostgresArchive.FLUSH_EVERY)]
    for s, d in many:
        archive.put(s, d)  # the 64th put flushes by itself
    assert len(pg_rows(pg_archive_url)) == 1 + PostgresArchive.FLUSH_EVERY
    big = b"\xab" * PostgresArchive.FLUSH_BYTES
    archive.put(hashlib.sha256(big).hexdigest(), big)  # 8 MiB pending: flushed by itself too
    assert pg_rows(pg_archive_url)[hashlib.sha256(big).hexdigest()] == (big, 8 << 20)
    archive.close()


@pytest.mark.postgres
def test_postgres_archive_put_is_idempotent(pg_archive_url: str) -> None:
    archive = PostgresArchive(pg_archive_url)
    archive.prepare()
    sha, data = blob(7)
    archive.put(sha, data)
    archive.put(sha, data)  # twice in one batch
    archive.flush()
    archive.put(sha, data)  # again, already stored
    archive.close()
    other = PostgresArchive(pg_archive_url)
    other.put(sha, data)  # from another connection
    other.close()
    assert pg_query(pg_archive_url, "SELECT count(*) FROM stoq_archive") == [(1,)]
    assert pg_rows(pg_archive_url) == {sha: (data, len(data))}


@pytest.mark.postgres
def test_postgres_archive_missing_damaged_and_refused_payloads(pg_archive_url: str) -> None:
    archive = PostgresArchive(pg_archive_url)
    archive.prepare()
    with pytest.raises(ArchiveError, match="is not in the archive"):
        archive.get("0" * 64)
    assert not archive.exists("0" * 64)
    with pytest.raises(ArchiveError, match="not a sha256"):
        archive.put("../etc/passwd", b"x")

    class Huge(bytes):
        def __len__(self) -> int:
            return PostgresArchive.MAX_BYTES + 1

    with pytest.raises(ArchiveError, match="more than a PostgreSQL archive holds"):
        archive.put("1" * 64, Huge())
    assert PostgresArchive.MAX_BYTES < 1 << 30

    sha, data = blob(5)
    archive.put(sha, data)
    archive.close()
    pg_query(pg_archive_url, "UPDATE stoq_archive SET content = %s WHERE sha256 = %s", data[:-1] + b"!", sha)
    with pytest.raises(ArchiveError, match="damaged"):
        PostgresArchive(pg_archive_url).get(sha)
    pg_query(pg_archive_url, "UPDATE stoq_archive SET content = '' WHERE sha256 = %s", sha)
    with pytest.raises(ArchiveError, match="damaged"):
        PostgresArchive(pg_archive_url).get(sha)


def test_postgres_archive_needs_a_url_string() -> None:
    with pytest.raises(ArchiveError, match="archiver postgres needs a URL as a str"):
        open_archive("postgres", Path("/srv/archive"))
    with pytest.raises(ArchiveError, match="needs the setting archive"):
        open_archive("postgres", "").prepare()
    with pytest.raises(ArchiveError, match="needs a postgresql:// URL"):
        open_archive("postgres", "/srv/archive").prepare()
    with pytest.raises(ArchiveError, match=r"cannot connect to the archive postgresql://stoq:\*\*\*@127\.0\.0\.1:1/x"):
        open_archive("postgres", "postgresql://stoq:s3cret@127.0.0.1:1/x").prepare()


def test_settings_give_the_postgres_url_unchanged() -> None:
    url = "postgresql+psycopg2://stoq:pw@db.example:5432/archive"
    settings = Settings(archiver="postgres", archive=url)
    assert settings.resolved_archive() == url
    assert Settings(archiver="pack", archive="/srv/a").resolved_archive() == Path("/srv/a")
    assert Settings(archiver="directory", archive="/srv//b").resolved_archive() == Path("/srv/b")


def _pg_writer(archive: PostgresArchive, start: int) -> None:
    for i in range(start, start + 40):  # the archive object is the parent's, inherited through fork
        archive.put(*blob(i))
    archive.close()


@pytest.mark.postgres
def test_postgres_archive_is_shared_by_processes_and_safe_across_fork(pg_archive_url: str) -> None:
    parent = PostgresArchive(pg_archive_url)
    parent.prepare()
    parent.put(*blob(999))
    parent.flush()  # the parent holds an open connection when it forks
    parent.put(*blob(998))  # and a pending payload, which the children must not write
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_pg_writer, args=(parent, s)) for s in (0, 20)]  # overlapping payloads
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert set(pg_rows(pg_archive_url)) == {blob(i)[0] for i in [*range(60), 999]}
    assert parent.get(blob(999)[0]) == blob(999)[1]  # the parent's session survived its children
    assert parent.get(blob(998)[0]) == blob(998)[1]
    parent.close()
    rows = pg_rows(pg_archive_url)  # a third connection
    assert rows == {blob(i)[0]: (blob(i)[1], len(blob(i)[1])) for i in [*range(60), 998, 999]}
    assert all(hashlib.sha256(content).hexdigest() == sha for sha, (content, _) in rows.items())
