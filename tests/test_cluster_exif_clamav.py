"""exif, clamav and iocextract-on-reader-text on their own queues: a real `celery -A stoq worker -Q NAME`
is the only consumer of the plugin's queue (the other worker serves every queue but that one), and the
submitted scan gets the same answer as the embedded one. Redis databases 6 and 7."""

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


@pytest.mark.tools("exiftool")
def test_exif_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    out = subprocess.run(["exiftool", "-j", "-G1", "-n", str(CORPUS / "test.jpg")], capture_output=True, check=True)
    (expected,) = json.loads(out.stdout)
    for key in ("SourceFile", "System:FileName", "System:Directory", "System:FileModifyDate",
                "System:FileAccessDate", "System:FileInodeChangeDate", "System:FilePermissions"):
        del expected[key]
    with dedicated_queue(tmp_path, testplugins_site, DB, "exif") as workers:
        doc = submit_and_embed(workers, tmp_path, str(CORPUS / "test.jpg"), "--workers", "exif")
        assert doc["results"][0]["workers"]["exif"] == {"tags": expected}
        assert tasks_run(workers[1]) == ["stoq.worker.exif"]
        assert "stoq.worker.exif" not in workers[0].log.read_text()


@pytest.mark.tools("clamd")
def test_clamav_runs_on_its_own_queue(tmp_path: Path, testplugins_site: Path) -> None:
    (tmp_path / "clamd").mkdir()
    clamd = Clamd(tmp_path / "clamd")
    clamd.start()
    sample = tmp_path / "sample.zip"
    with zipfile.ZipFile(sample, "w") as archive:
        archive.writestr("eicar.com", EICAR)
    try:
        with dedicated_queue(tmp_path, testplugins_site, DB, "clamav") as workers:
            doc = submit_and_embed(workers, tmp_path, str(sample), "--workers", "clamav",
                                   "-o", f"clamav.socket={clamd.socket}")
            root, member = doc["results"]
            assert root["workers"]["clamav"]["signatures"] == ["Test.Own.EICAR.UNOFFICIAL"]
            assert member["filename"] == "eicar.com" and member["flags"] == ["clamav:infected"]
            assert tasks_run(workers[1]) == ["stoq.worker.clamav"] * 2
            assert "stoq.worker.clamav" not in workers[0].log.read_text()
    finally:
        clamd.stop()


def test_email_text_goes_to_iocextract_on_its_queue(tmp_path: Path, testplugins_site: Path) -> None:
    with dedicated_queue(tmp_path, testplugins_site, DB, "iocextract") as workers:
        doc = submit_and_embed(workers, tmp_path, str(CORPUS / "test.eml"))  # no --workers: routing by origin
        texts = [p for p in doc["results"] if p["extracted_by"] == "email" and p["mime"].startswith("text/")]
        assert len(texts) == 2 and all("iocextract" in p["workers"] for p in texts)
        assert tasks_run(workers[1]) == ["stoq.worker.iocextract"]  # one task: both bodies are of one wave
        assert "stoq.reader.email" in workers[0].log.read_text()
