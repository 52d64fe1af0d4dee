"""The ``filetype`` worker against the reference tools on every corpus file: ``file -b``, ``file -b
--mime-type`` and ``file -b --extension`` on the file, and
magika's own command-line tool (its Rust build, shipped in the same wheel)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from stoq.plugin import Payload
from stoq_plugins.filetype import FiletypePlugin, suffix

from helpers import CORPUS, corpus_files

MAGIKA = Path(sys.executable).parent / "magika"


@pytest.fixture(scope="module")
def plugin() -> FiletypePlugin:
    p = FiletypePlugin()
    p.setup()
    return p


def file_says(path: Path, *args: str) -> str:
    """``file`` on the path; an empty file read from a pipe (on a path it answers from stat: `inode/x-empty`)."""
    empty = path.stat().st_size == 0
    return subprocess.run(["file", "-b", *args, "-" if empty else str(path)], input=b"" if empty else None,
                          capture_output=True, check=True).stdout.decode().rstrip("\n")


@pytest.fixture(scope="module")
def magika_says() -> dict[str, dict[str, Any]]:
    if not MAGIKA.exists():
        pytest.skip("the magika extra is not installed")
    out = subprocess.run([str(MAGIKA), "--json", *map(str, corpus_files())], capture_output=True, check=True).stdout
    return {Path(r["path"]).name: r["result"]["value"] for r in json.loads(out)}


@pytest.mark.tools("file")
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_libmagic_and_magika_equal_their_tools(path: Path, plugin: FiletypePlugin, magika_says: dict[str, Any],
                                              make_payload: Callable[..., Payload]) -> None:
    data = plugin.scan(make_payload(path.read_bytes(), filename=path.name), plugin.options).data
    extensions = file_says(path, "--extension")
    assert data["magic"] == {"description": file_says(path), "mime": file_says(path, "--mime-type"),
                             "extensions": [] if extensions == "???" else [e for e in extensions.split("/") if e]}
    ref = magika_says[path.name]
    assert {k: v for k, v in data["magika"].items() if k != "score"} == {
        "label": ref["output"]["label"], "mime": ref["output"]["mime_type"], "description": ref["output"]["description"],
        "group": ref["output"]["group"], "extensions": ref["output"]["extensions"]}
    assert data["magika"]["score"] == pytest.approx(ref["score"], abs=0.01)
    assert data["extension"] == path.name.rsplit(".", 1)[1]
    assert data["magika_skipped"] is None


@pytest.mark.parametrize(("name", "mismatch"), [("invoice.pdf", True), ("invoice.PDF.exe", False),
                                                ("C:\\Temp\\setup.DLL", False), (None, None), ("README", None)])
def test_a_pe_named_otherwise_is_flagged(name: str | None, mismatch: bool | None, plugin: FiletypePlugin,
                                         make_payload: Callable[..., Payload]) -> None:
    result = plugin.scan(make_payload((CORPUS / "test.exe").read_bytes(), filename=name), plugin.options)
    assert result.data["extension_mismatch"] is mismatch
    assert result.data["engines_disagree"] is False  # exe/com and exe/dll
    assert result.flags == (["filetype:extension-mismatch"] if mismatch else [])


def test_engines_that_disagree_are_flagged(plugin: FiletypePlugin, make_payload: Callable[..., Payload]) -> None:
    """An armoured PGP message: libmagic suggests `asc`, magika `pem`/`pub`/`gpg` (both answers, no
    extension in common: what the flag is for)."""
    result = plugin.scan(make_payload((CORPUS / "test.txt.asc").read_bytes(), filename="m.asc"), plugin.options)
    assert result.data["magic"]["extensions"] == ["asc"] and result.data["magika"]["label"] == "pem"
    assert result.data["engines_disagree"] is True and result.data["extension_mismatch"] is False
    assert result.flags == ["filetype:engines-disagree"]


def test_without_magika_libmagic_answers_alone(plugin: FiletypePlugin, make_payload: Callable[..., Payload]) -> None:
    result = plugin.scan(make_payload((CORPUS / "test.exe").read_bytes(), filename="x.pdf"),
                         FiletypePlugin.Options(magika=False))
    assert result.data["magika"] is None and result.data["magika_skipped"] == "disabled"
    assert result.data["extension_mismatch"] is True and result.data["engines_disagree"] is None
    assert result.flags == ["filetype:extension-mismatch"]


def test_magika_not_installed_is_reported(tmp_path: Path) -> None:
    """In a fresh process where `magika` cannot be imported (a shadowing module that is not a package
    and a find_spec of None), the worker still types with libmagic and flags the payload."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['magika'] = None\n")
    script = ("import hashlib, json, importlib.util\n"
              "from stoq.plugin import Payload\nfrom stoq_plugins.filetype import FiletypePlugin\n"
              "p = FiletypePlugin(); p.setup()\n"
              "r = p.scan(Payload(b'MZ' + bytes(100), 'x', 'a.exe', 'x', 'x', 0), p.options)\n"
              "print(json.dumps([r.data['magika'], r.data['magika_skipped'], r.flags]))\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    got = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == [None, "not-installed", ["filetype:magika-unavailable"]]


def test_suffix() -> None:
    assert [suffix(n) for n in ("a.PDF", ".bashrc", "a.", "dir.d/file", "x." + "a" * 17, "a.tar.gz")] == [
        "pdf", None, None, None, None, "gz"]


def test_the_reference_tools_are_there() -> None:
    assert shutil.which("file") and MAGIKA.exists()
