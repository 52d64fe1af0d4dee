"""Archivers are plugins: chosen by name (setting, STOQ_ARCHIVER, --archiver), found through the
``stoq.plugins`` entry points (a third-party one installed as a distribution is used like the bundled
ones), listed by ``stoq list``, refused by name when unknown. No services needed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from helpers import CORPUS
from stoq.archive import ARCHIVERS, open_archive, open_configured
from stoq.config import ConfigError, Settings
from stoq.plugin import ArchiveError, ArchiverPlugin

FLAT = '''
"""A third party's archiver: each payload a file <root>/<sha256>.bin."""
import hashlib
from pathlib import Path

from stoq.plugin import ArchiveError, ArchiverPlugin


class FlatArchiver(ArchiverPlugin):
    """Keeps each payload as ROOT/<sha256>.bin."""

    name = "flat"
    version = "2.5"
    directory = True

    def prepare(self):
        Path(self.location).mkdir(parents=True, exist_ok=True)

    def _path(self, sha256):
        return Path(self.location) / f"{sha256}.bin"

    def exists(self, sha256):
        return self._path(sha256).is_file()

    def put(self, sha256, content):
        self._path(sha256).write_bytes(content)

    def get(self, sha256, verify=True):
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise ArchiveError(f"payload {sha256} is not in the archive {self.display}") from None

    def delete(self, sha256):
        self._path(sha256).unlink(missing_ok=True)
'''


@pytest.fixture(scope="module")
def flat_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("flat-site")
    (site / "stoq_flat.py").write_text(FLAT)
    info = site / "stoq_flat-2.5.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stoq-flat\nVersion: 2.5\n")
    (info / "entry_points.txt").write_text("[stoq.plugins]\nflat = stoq_flat:FlatArchiver\n")
    return site


def test_a_third_party_archiver_is_listed_and_stores_every_payload(
        run_stoq: Callable[..., subprocess.CompletedProcess[bytes]], flat_site: Path, tmp_path: Path) -> None:
    listed = run_stoq("list", env={"PYTHONPATH": str(flat_site)})
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout.decode()
    section = text[text.index("archiver:\n"):]
    assert "  flat           2.5      Keeps each payload as ROOT/<sha256>.bin.\n" in section
    for name in ("directory", "gridfs", "none", "pack", "postgres", "s3"):
        assert f"\n  {name} " in section
    got = run_stoq("scan", str(CORPUS / "test.zip"), "--archiver", "flat", "--archive", str(tmp_path / "flat"),
                   "--format", "json", env={"PYTHONPATH": str(flat_site)})
    assert got.returncode == 0, got.stderr
    (doc,) = json.loads(got.stdout)
    stored = {p["sha256"] for p in doc["results"] if p["duplicate_of"] is None}
    assert len(stored) > 1
    assert {p.name for p in (tmp_path / "flat").iterdir()} == {f"{sha}.bin" for sha in stored}
    for sha in stored:
        assert hashlib.sha256((tmp_path / "flat" / f"{sha}.bin").read_bytes()).hexdigest() == sha
    assert not (tmp_path / "archive").exists()  # STOQ_ARCHIVE of the fixture: overridden by --archive


def test_the_setting_environment_and_command_line_choose_the_archiver(
        run_stoq: Callable[..., subprocess.CompletedProcess[bytes]], tmp_path: Path) -> None:
    sample = CORPUS / "test.txt"
    sha = hashlib.sha256(sample.read_bytes()).hexdigest()
    (tmp_path / "stoq.toml").write_text('[stoq]\narchiver = "directory"\n')
    got = run_stoq("scan", str(sample), "--config", str(tmp_path / "stoq.toml"), "--no-store")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "archive" / sha[:2] / sha[2:4] / sha).read_bytes() == sample.read_bytes()  # STOQ_ARCHIVE
    got = run_stoq("scan", str(sample), "--config", str(tmp_path / "stoq.toml"), "--no-store", "--archive",
                   str(tmp_path / "env-pack"), env={"STOQ_ARCHIVER": "pack"})  # the environment beats stoq.toml
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "env-pack" / "index.sqlite").is_file()
    got = run_stoq("scan", str(sample), "--no-store", "--archiver", "pack", "--archive", str(tmp_path / "packed"),
                   env={"STOQ_ARCHIVER": "directory"})  # the command line wins
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "packed" / "index.sqlite").is_file() and len(list((tmp_path / "packed" / "packs").iterdir())) == 1


def test_an_unknown_archiver_is_refused_by_name(run_stoq: Callable[..., subprocess.CompletedProcess[bytes]]) -> None:
    got = run_stoq("scan", str(CORPUS / "test.txt"), "--archiver", "s4")
    assert got.returncode == 4
    assert ("unknown archiver 's4' (installed: directory, gridfs, none, pack, postgres, s3; see `stoq list`)"
            in got.stderr.decode())
    got = run_stoq("scan", str(CORPUS / "test.txt"), "--archiver", "yara")
    assert got.returncode == 4 and "plugin 'yara' is a worker, not an archiver" in got.stderr.decode()
    got = run_stoq("scan", str(CORPUS / "test.txt"), "--archiver", "Not A Name")
    assert got.returncode == 4 and "setting archiver='Not A Name'" in got.stderr.decode()


def test_archiver_options_are_validated_and_warned_about_when_unused(
        run_stoq: Callable[..., subprocess.CompletedProcess[bytes]]) -> None:
    got = run_stoq("scan", str(CORPUS / "test.txt"), "--no-store", "-o", "s3.part_size=6291456")
    assert got.returncode == 0, got.stderr
    assert "warning: -o s3.part_size: archiver 's3' is not selected (--archiver s3)" in got.stderr.decode()
    got = run_stoq("scan", str(CORPUS / "test.txt"), "--archiver", "s3", "--archive", "s3://b", "-o", "s3.part_size=12")
    assert got.returncode == 4
    assert "option s3.part_size='12': Input should be greater than or equal to 5242880" in got.stderr.decode()


def test_open_configured_and_open_archive_build_the_named_archiver(tmp_path: Path) -> None:
    assert ARCHIVERS == ("pack", "directory", "none", "postgres")
    made = open_configured(Settings(archiver="directory", archive=str(tmp_path / "d")))
    assert type(made).__name__ == "DirectoryArchive" and isinstance(made, ArchiverPlugin)
    assert made.root == tmp_path / "d" and not made.locates
    packed = open_archive("pack", tmp_path / "p")
    assert packed.locates and packed.name == "pack"
    s3 = open_configured(Settings(archiver="s3", archive="s3://bucket/x", plugins={"s3": {"part_size": str(6 << 20)}}))
    assert s3.options.part_size == 6 << 20 and s3.location == "s3://bucket/x"
    with pytest.raises(ConfigError, match="unknown archiver 'nope'"):
        open_configured(Settings(archiver="nope"))
    with pytest.raises(ArchiveError, match="unknown archiver 'nope'"):
        open_archive("nope", tmp_path)


@pytest.mark.parametrize("name, location, module, extra", [("s3", "s3://bucket", "boto3", "s3"),
                                                           ("gridfs", "mongodb://127.0.0.1:1/x", "pymongo", "mongodb")])
def test_an_archiver_whose_extra_is_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch, name: str,
                                                                 location: str, module: str, extra: str) -> None:
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".") or m in ("gridfs", "botocore")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError, as without the package
    with pytest.raises(ArchiveError, match=rf"pip install 'stoq-analysis\[{extra}\]'"):
        open_archive(name, location).prepare()
