"""ar archives read in process: the members are what binutils' ``ar t`` lists and ``ar p`` prints, for
GNU ar's long names (a ``//`` table), its deterministic mode (mode fields with no file type, which
bsdtar refuses to convert: every member was lost) and a symbol table, and for a .deb."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stoq.plugin import Result
from stoq_plugins.decompress import DecompressPlugin

AR = "application/x-archive"
FILES = {"debian-binary": b"2.0\n", "a-rather-long-member-name.txt": b"long name\n" * 50,
         "odd": b"odd length", "control.tar.zst": bytes(range(256)) * 3}


def scan(make_payload, data: bytes, **options: object) -> Result:
    plugin = DecompressPlugin(DecompressPlugin.Options(**options))
    return plugin.scan(make_payload(data, AR, "x.a"), plugin.options)


def ar(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["ar", *args], cwd=cwd, capture_output=True, check=True, timeout=60).stdout


def reference(path: Path) -> list[tuple[str, bytes]]:
    names = ar("t", str(path), cwd=path.parent).decode().splitlines()
    return [(n, ar("p", str(path), n, cwd=path.parent)) for n in names]


@pytest.mark.parametrize("flags", ["rcD", "rcU"])  # deterministic (Debian's default), and with real modes
def test_gnu_ar_as_binutils_reads_it(tmp_path: Path, make_payload, flags: str) -> None:
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    ar(flags, "t.a", *FILES, cwd=tmp_path)
    data = (tmp_path / "t.a").read_bytes()
    assert b"//" in data[:80]  # the long-name table comes first
    result = scan(make_payload, data)
    assert [(c.filename, c.content) for c in result.children] == reference(tmp_path / "t.a")
    assert len(result.children) == len(FILES) and result.flags == []
    assert [c.meta["size"] for c in result.children] == [len(c) for c in FILES.values()]


def test_symbol_table_is_skipped_and_damage_flagged(make_payload) -> None:
    def member(name: bytes, content: bytes) -> bytes:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"644".ljust(8)
        return header + str(len(content)).encode().ljust(10) + b"`\n" + content + b"\n" * (len(content) % 2)
    data = b"!<arch>\n" + member(b"/", b"\0\0\0\0") + member(b"a.o/", b"abc") + member(b"b.o/", b"defg")
    assert [(c.filename, c.content) for c in scan(make_payload, data).children] == [("a.o", b"abc"), ("b.o", b"defg")]
    cut = scan(make_payload, data[:-3])
    assert [c.filename for c in cut.children] == ["a.o"] and cut.flags == ["corrupt:truncated"]
    bad = scan(make_payload, data.replace(b"`\n", b"xx", 2))
    assert bad.children == [] and bad.flags == ["corrupt:data"]
    with pytest.raises(ValueError):
        scan(make_payload, b"definitely not an archive\n" * 30)


def test_deb(corpus: Path, make_payload, tmp_path: Path) -> None:
    (tmp_path / "t.deb").write_bytes((corpus / "test.deb").read_bytes())
    result = scan(make_payload, (tmp_path / "t.deb").read_bytes())
    assert [(c.filename, c.content) for c in result.children] == reference(tmp_path / "t.deb")
    assert [c.filename for c in result.children] == ["debian-binary", "control.tar.zst", "data.tar.zst"]
