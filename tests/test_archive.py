"""The content-addressed archives: pack files with a SQLite index, and a file per payload."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from stoq.archive import ArchiveError, DirectoryArchive, PackArchive, open_archive


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
    archive.delete(sha)
    assert not archive.exists(sha)
    assert os.listdir(tmp_path / sha[:2] / sha[2:4]) == []
