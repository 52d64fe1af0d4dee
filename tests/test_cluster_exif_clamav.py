"""exif, clamav and iocextract-on-reader-text on their own queues: a real `celery -A stoq worker -Q
exif,clamav,iocextract` is the only consumer of those queues (the other worker serves every queue but
those), and each submitted scan gets the same answer as the embedded one. Redis databases 6 and 7."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from clamdtest import EICAR, Clamd
from helpers import CORPUS, validate
from test_cluster import dedicated_queue, normal, tasks_run

DB = "stoq_cluster_exifav"


def submit_and_embed(workers: Any, tmp_path: Path, *args: str) -> dict[str, Any]:
    """The scan submitted to the cluster, after checking it equals the embedded scan of the same file."""
    got = workers[0].stoq("submit", *args, "--format", "json", timeout=180)
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    validate(doc)
    embedded = workers[0].stoq("scan", *args, "--format", "json", "--no-store", STOQ_BROKER_URL="",
                               STOQ_ARCHIVE=str(tmp_path / "a"))
    assert embedded.returncode == 0, embedded.stderr
    assert normal(doc) == normal(json.loads(embedded.stdout)[0])
    return doc


def reference_tags(path: Path) -> dict[str, Any]:
    """`exiftool -j -G1 -n` on the file, less the tags of the file rather than its content."""
    out = subprocess.run(["exiftool", "-j", "-G1", "-n", str(path)], capture_output=True, check=True)
    (tags,) = json.loads(out.stdout)
    for key in ("SourceFile", "System:FileName", "System:Directory", "System:FileModifyDate",
                "System:FileAccessDate", "System:FileInodeChangeDate", "System:FilePermissions"):
        del tags[key]
    return tags


@pytest.mark.tools("exiftool", "clamd")
def test_exif_clamav_and_reader_text_on_their_own_queues(tmp_path: Path, testplugins_site: Path) -> None:
    """One cluster (its start-up is most of the cost) for three plugins on their own queues, one scan each."""
    (tmp_path / "clamd").mkdir()
    clamd = Clamd(tmp_path / "clamd")
    clamd.start()
    sample = tmp_path / "sample.zip"
    with zipfile.ZipFile(sample, "w") as archive:
        archive.writestr("eicar.com", EICAR)
    try:
        with dedicated_queue(tmp_path, testplugins_site, DB, "exif,clamav,iocextract") as workers:
            # exif
            doc = submit_and_embed(workers, tmp_path, str(CORPUS / "test.jpg"), "--workers", "exif")
            assert doc["results"][0]["workers"]["exif"] == {"tags": reference_tags(CORPUS / "test.jpg")}
            assert tasks_run(workers[1]) == ["stoq.worker.exif"]
            # clamav: the zip and its member, one wave each
            doc = submit_and_embed(workers, tmp_path, str(sample), "--workers", "clamav",
                                   "-o", f"clamav.socket={clamd.socket}")
            root, member = doc["results"]
            assert root["workers"]["clamav"]["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]
            assert member["filename"] == "eicar.com" and member["flags"] == ["clamav:infected"]
            assert tasks_run(workers[1])[1:] == ["stoq.worker.clamav"] * 2
            # iocextract in the worker set: its text mimes route it to the e-mail's bodies only
            doc = submit_and_embed(workers, tmp_path, str(CORPUS / "test.eml"), "--workers", "iocextract")
            texts = [p for p in doc["results"] if p["extracted_by"] == "email" and p["mime"].startswith("text/")]
            assert len(texts) == 2 and all("iocextract" in p["workers"] for p in texts)
            # two tasks: the message itself (message/rfc822 is text to it), then its bodies, both of one wave
            assert tasks_run(workers[1])[3:] == ["stoq.worker.iocextract"] * 2
            general = workers[0].log.read_text()
            assert "stoq.reader.email" in general
            assert not any(f"stoq.worker.{name}" in general for name in ("exif", "clamav", "iocextract"))
    finally:
        clamd.stop()
