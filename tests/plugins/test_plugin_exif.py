"""The exif worker against ExifTool itself: its tags equal a separate `exiftool -j -G1 -n` run on the same
corpus file, minus what describes our scratch copy; one ExifTool per process, restarted when killed or
hung (a fake exiftool on STOQ_TOOL_PATH that hangs or dies), errors named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import CORPUS, validate
from stoq.plugin import Payload
from stoq_plugins._exiftool import ExifToolError, ExifToolTimeout
from stoq_plugins.exif import ExifPlugin

pytestmark = pytest.mark.tools("exiftool")
FILES = ["test.jpg", "test.png", "test.gif", "test.pdf", "test.docx", "test.doc", "test.xls", "test.exe",
         "test.lnk", "test.msi", "test.macho"]
#: The tags of the file ExifTool was given rather than of its content, which the plugin leaves out.
SCRATCH_TAGS = {"SourceFile", "System:FileName", "System:Directory", "System:FileModifyDate",
                "System:FileAccessDate", "System:FileInodeChangeDate", "System:FilePermissions"}


def reference(path: Path, *args: str) -> dict[str, Any]:
    """ExifTool's own answer for the file, from a process of its own."""
    out = subprocess.run(["exiftool", "-j", "-G1", *args, str(path)], capture_output=True, check=True).stdout
    (tags,) = json.loads(out)
    return {k: v for k, v in tags.items() if k not in SCRATCH_TAGS}


def corpus_payload(make_payload: Callable[..., Payload], name: str, mime: str = "image/jpeg") -> Payload:
    return make_payload((CORPUS / name).read_bytes(), mime=mime, filename=name)


@pytest.fixture
def plugin(scratch_parent: Path) -> Any:
    made = ExifPlugin()
    made.setup()
    yield made
    made.exiftool.stop()


@pytest.mark.parametrize("name", FILES)
def test_tags_equal_exiftools_own(plugin: ExifPlugin, make_payload: Callable[..., Payload], name: str) -> None:
    result = plugin.scan(corpus_payload(make_payload, name), ExifPlugin.Options())
    expected = reference(CORPUS / name, "-n")
    assert result.data == {"tags": expected}
    assert expected["System:FileSize"] == (CORPUS / name).stat().st_size and "File:FileType" in expected
    assert result.flags == [f for f, k in (("exif:error", "ExifTool:Error"), ("exif:warning", "ExifTool:Warning"))
                            if k in expected]
    assert plugin.exiftool.starts == 1  # one ExifTool for every payload


def test_printed_values_without_numeric(plugin: ExifPlugin, make_payload: Callable[..., Payload]) -> None:
    result = plugin.scan(corpus_payload(make_payload, "test.jpg"), ExifPlugin.Options(numeric=False))
    assert result.data == {"tags": reference(CORPUS / "test.jpg")}
    assert result.data["tags"]["IFD0:ResolutionUnit"] == "inches"


def test_unknown_format_is_a_flag(plugin: ExifPlugin, make_payload: Callable[..., Payload]) -> None:
    result = plugin.scan(make_payload(b"\x00\x01 not a known format " * 4), ExifPlugin.Options())
    assert result.data["tags"]["ExifTool:Error"] == "Unknown file type" and result.flags == ["exif:error"]


def test_accepts_by_mime(make_payload: Callable[..., Payload]) -> None:
    plugin = ExifPlugin()
    assert [plugin.accepts(make_payload(b"x", mime=m)) for m in (
        "image/png", "application/pdf", "application/vnd.ms-excel", "application/x-dosexec", "video/mp4",
        "text/plain", "application/zip", "application/vnd.ms-cab-compressed", "image")] == [
        True, True, True, True, True, False, False, False, False]
    assert ExifPlugin(ExifPlugin.Options(types=["*"])).accepts(make_payload(b"x", mime="text/plain"))
    assert not ExifPlugin(ExifPlugin.Options(types=["image/*"])).accepts(make_payload(b"x", mime="application/pdf"))


def test_size_and_output_limits(plugin: ExifPlugin, make_payload: Callable[..., Payload]) -> None:
    payload = corpus_payload(make_payload, "test.jpg")
    assert plugin.scan(payload, ExifPlugin.Options(max_bytes=1000)).flags == ["limit:exif-size"]
    capped = plugin.scan(payload, ExifPlugin.Options(max_output_bytes=1024))
    assert capped.data == {"tags": {}} and capped.flags == ["limit:exif-output"]
    assert plugin.exiftool.proc is None  # killed mid-answer: the next payload starts another
    assert plugin.scan(payload, ExifPlugin.Options()).data == {"tags": reference(CORPUS / "test.jpg", "-n")}


def test_killed_exiftool_is_restarted(plugin: ExifPlugin, make_payload: Callable[..., Payload]) -> None:
    payload = corpus_payload(make_payload, "test.png", "image/png")
    first = plugin.scan(payload, ExifPlugin.Options())
    assert plugin.exiftool.proc is not None
    old = plugin.exiftool.proc.pid
    os.kill(old, signal.SIGKILL)
    plugin.exiftool.proc.wait()
    assert plugin.scan(payload, ExifPlugin.Options()).data == first.data
    assert plugin.exiftool.starts == 2 and plugin.exiftool.proc.pid != old


def fake_exiftool(where: Path, real_when: Path) -> str:
    """A directory with an ``exiftool`` that answers its start-up request, then hangs on the next one
    (as a stuck parser would); while ``real_when`` exists it is the real ExifTool."""
    where.mkdir()
    script = where / "exiftool"
    script.write_text(f"""#!/bin/sh
[ -e {real_when} ] && exec /usr/bin/exiftool "$@"
n=0
while read -r line; do
  case "$line" in
    -execute*) n=$((n+1)); num=${{line#-execute}}
      [ $n -ge 2 ] && exec sleep 600
      echo 12.57; echo "{{ready$num}}"; echo "{{ready$num}}" >&2;;
  esac
done
""")
    script.chmod(0o755)
    (where / "sleep").symlink_to("/bin/sleep")
    return str(where)


def test_hung_exiftool_is_killed_named_and_replaced(plugin: ExifPlugin, make_payload: Callable[..., Payload],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    monkeypatch.setenv("STOQ_TOOL_PATH", fake_exiftool(tmp_path / "bin", real))
    payload = corpus_payload(make_payload, "test.gif", "image/gif")
    with pytest.raises(ExifToolTimeout, match=r"^exiftool did not answer within 0.5 s: killed$"):
        plugin.scan(payload, ExifPlugin.Options(timeout=0.5))
    assert plugin.exiftool.proc is None  # killed with its process group
    real.touch()
    assert plugin.scan(payload, ExifPlugin.Options()).data == {"tags": reference(CORPUS / "test.gif", "-n")}
    assert plugin.exiftool.starts == 2


def test_exiftool_killed_mid_run_is_an_error_then_restarted(plugin: ExifPlugin, make_payload: Callable[..., Payload],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    monkeypatch.setenv("STOQ_TOOL_PATH", fake_exiftool(tmp_path / "bin", real))
    payload = corpus_payload(make_payload, "test.gif", "image/gif")
    plugin.exiftool.start()
    assert plugin.exiftool.proc is not None
    pid = plugin.exiftool.proc.pid

    def kill_when_hung() -> None:  # the fake execs sleep on its second request: the payload's
        for _ in range(500):
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "sleep":
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.01)
    killer = threading.Thread(target=kill_when_hung)
    killer.start()
    with pytest.raises(ExifToolError, match=r"^exiftool died \(exit status -9\)$"):
        plugin.scan(payload, ExifPlugin.Options(timeout=60))
    killer.join()
    real.touch()
    assert plugin.scan(payload, ExifPlugin.Options()).data == {"tags": reference(CORPUS / "test.gif", "-n")}


def test_embedded_scan(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]], tmp_path: Path) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.jpg"), str(CORPUS / "test.txt"), "--workers", "exif", "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr.decode()
    jpg, txt = [json.loads(line) for line in proc.stdout.splitlines()]
    validate(jpg)
    assert jpg["results"][0]["workers"]["exif"] == {"tags": reference(CORPUS / "test.jpg", "-n")}
    assert "exif" not in txt["results"][0]["workers"]  # text/plain is not one of its types


def test_embedded_hang_is_an_error_entry(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]],
                                         tmp_path: Path) -> None:
    bin_dir = fake_exiftool(tmp_path / "bin", tmp_path / "never")
    proc = run_stoq("scan", str(CORPUS / "test.png"), "--workers", "exif", "-o", "exif.timeout=0.5",
                    "--format", "json", env={"STOQ_TOOL_PATH": bin_dir})
    assert proc.returncode == 1, proc.stderr.decode()
    (doc,) = json.loads(proc.stdout)
    (error,) = doc["errors"]
    assert error["plugin"] == "exif" and error["kind"] == "error"
    assert error["message"].startswith("ExifToolTimeout: exiftool did not answer within 0.5 s: killed (at ")
    assert "exif" not in doc["results"][0]["workers"]


def test_embedded_without_exiftool(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_stoq("scan", str(CORPUS / "test.png"), "--workers", "exif", "--format", "json",
                    env={"STOQ_TOOL_PATH": str(tmp_path / "empty")})
    (doc,) = json.loads(proc.stdout)
    assert doc["errors"] == [{"payload_id": doc["results"][0]["payload_id"], "plugin": "exif", "kind": "tool-missing",
                              "message": "exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)"}]
    assert doc["results"][0]["flags"] == ["tool:missing"]
