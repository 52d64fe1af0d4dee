"""The clamav worker against a real clamd started by the tests (tests/clamdtest.py) with a signature
database of its own: the names it reports are those of that database (clamd adds ``.UNOFFICIAL`` to
signatures of unsigned databases), its limits become flags, and a clamd that is down is a named error
until it is back, with no restart of the plugin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from clamdtest import EICAR, FILE_MAX, MARKER, STREAM_MAX, Clamd, generated
from helpers import CORPUS, validate
from stoq.plugin import Payload
from stoq_plugins._clamd import ClamdUnavailable
from stoq_plugins.clamav import ClamavPlugin

pytestmark = pytest.mark.tools("clamd")


@pytest.fixture(scope="module")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    daemon = Clamd(tmp_path_factory.mktemp("clamd"))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def version() -> str:
    """What clamd says its version is (no .cvd database is loaded, so no database version follows)."""
    return subprocess.run(["clamd", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def scan(clamd: Clamd, content: bytes, **options: object) -> tuple[object, list[str]]:
    plugin = ClamavPlugin(ClamavPlugin.Options(socket=str(clamd.socket), **options))
    result = plugin.scan(Payload(content, "p", None, "application/octet-stream", "0", 0), plugin.options)
    return result.data, result.flags


@pytest.mark.parametrize(("content", "name"), [
    (generated(), "Test.Own.Generated.UNOFFICIAL"),
    (b"some text, then " + MARKER + b" and more", "Test.Own.Marker.UNOFFICIAL"),
    (EICAR, "Test.Own.EICAR.UNOFFICIAL"),
])
def test_signatures_of_our_database(clamd: Clamd, version: str, content: bytes, name: str) -> None:
    data, flags = scan(clamd, content)
    assert data == {"verdict": "infected", "signatures": [name], "limits": [], "reply": f"stream: {name} FOUND",
                    "version": version}
    assert flags == ["clamav:infected"]


@pytest.mark.parametrize("name", ["test.exe", "test.pdf", "test.txt"])
def test_corpus_files_are_clean(clamd: Clamd, version: str, name: str) -> None:
    data, flags = scan(clamd, (CORPUS / name).read_bytes())
    assert data == {"verdict": "clean", "signatures": [], "limits": [], "reply": "stream: OK", "version": version}
    assert flags == []


def test_one_byte_changed_is_clean(clamd: Clamd) -> None:
    changed = bytearray(generated())
    changed[5000] ^= 1
    assert scan(clamd, bytes(changed))[0]["verdict"] == "clean"  # type: ignore[index]


def test_clamds_own_limits_are_flags(clamd: Clamd) -> None:
    data, flags = scan(clamd, b"\0" * (STREAM_MAX + 1))
    assert (data["verdict"], data["limits"], data["reply"]) == (  # type: ignore[index]
        "incomplete", ["stream-size"], "INSTREAM size limit exceeded. ERROR")
    assert flags == ["limit:clamd-stream-size"]
    data, flags = scan(clamd, b"\0" * (FILE_MAX + 1))  # under StreamMaxLength, over MaxFileSize
    assert (data["verdict"], data["limits"]) == ("incomplete", ["maxfilesize"])  # type: ignore[index]
    assert data["reply"] == "stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND"  # type: ignore[index]
    assert flags == ["limit:clamd-maxfilesize"]
    assert scan(clamd, EICAR, max_bytes=10) == (None, ["limit:clamav-size"])


def test_clamd_down_then_back(clamd: Clamd, version: str) -> None:
    plugin = ClamavPlugin(ClamavPlugin.Options(socket=str(clamd.socket)))
    payload = Payload(EICAR, "p", None, "text/plain", "0", 0)
    assert plugin.scan(payload, plugin.options).data["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]  # type: ignore[index]
    clamd.stop()
    try:
        with pytest.raises(ClamdUnavailable, match=rf"^clamd is not answering on {clamd.socket}: "):
            plugin.scan(payload, plugin.options)
    finally:
        clamd.start()
    assert plugin.scan(payload, plugin.options).data["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]  # type: ignore[index]


def test_embedded_scan(clamd: Clamd, version: str, run_stoq: Callable[..., subprocess.CompletedProcess[bytes]],
                       tmp_path: Path) -> None:
    sample = tmp_path / "sample.zip"
    import zipfile
    with zipfile.ZipFile(sample, "w") as archive:
        archive.writestr("eicar.com", EICAR)
        archive.writestr("readme.txt", "nothing here")
    proc = run_stoq("scan", str(sample), "--workers", "clamav", "-o", f"clamav.socket={clamd.socket}",
                    "--format", "json")
    assert proc.returncode == 0, proc.stderr.decode()
    (doc,) = json.loads(proc.stdout)
    validate(doc)
    by_name = {p["filename"]: p for p in doc["results"]}
    # clamd opens the zip itself: the root is infected through its member, as the member is.
    assert by_name["sample.zip"]["workers"]["clamav"]["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]
    assert by_name["eicar.com"]["workers"]["clamav"]["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]
    assert by_name["eicar.com"]["flags"] == ["clamav:infected"]
    assert by_name["readme.txt"]["workers"]["clamav"]["verdict"] == "clean"


def test_embedded_scan_with_clamd_down(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]],
                                       tmp_path: Path) -> None:
    missing = tmp_path / "no-clamd.sock"
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--workers", "clamav", "-o", f"clamav.socket={missing}",
                    "--format", "json")
    assert proc.returncode == 1, proc.stderr.decode()
    (doc,) = json.loads(proc.stdout)
    (error,) = doc["errors"]
    assert (error["plugin"], error["kind"]) == ("clamav", "error")
    assert error["message"].startswith(f"ClamdUnavailable: clamd is not answering on {missing}: No such file")
