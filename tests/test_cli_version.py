"""``stoq --version``: stoq's version, its key libraries' and the external programs', each checked
against the library's or the program's own answer."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import pytest
import yara

from stoq.plugin import tool_path
from stoq.registry import Registry

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def first_line(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, env={"LC_ALL": "C.UTF-8"})
    return next(line.strip() for line in (done.stdout + b"\n" + done.stderr).decode().splitlines() if line.strip())


@pytest.mark.tools("file")
def test_version_json_names_the_libraries_and_programs(run_stoq: Run) -> None:
    proc = run_stoq("--version", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["stoq"] == version("stoq-analysis")
    libs = got["libraries"]
    for name in ("yara-python", "python-magic", "pefile", "celery", "kombu", "sqlalchemy"):
        assert libs[name] == version(name), name
    assert libs["libyara"] == yara.__version__
    # `file` is libmagic's own program: "file-5.44"
    assert libs["libmagic"] == first_line(["file", "--version"]).removeprefix("file-")
    declared = {t.command: t for e in Registry.discover().entries.values() if e.cls for t in e.cls.tools}
    assert [t["command"] for t in got["tools"]] == sorted(declared)
    for row in got["tools"]:
        path = shutil.which(row["command"], path=tool_path())
        assert row["path"] == path
        if path:
            assert row["version"] == first_line([path, *declared[row["command"]].version]), row
        else:
            assert row["version"] is None
    assert "decompress" in {p for t in got["tools"] for p in t["plugins"]}


def test_version_text_has_one_line_per_library_and_program(run_stoq: Run) -> None:
    proc = run_stoq("--version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith(f"stoq {version('stoq-analysis')} (Python ")
    assert f"  yara-python: {version('yara-python')}" in lines
    assert f"  libyara: {yara.__version__}" in lines
    gpg = shutil.which("gpg", path=tool_path())
    if gpg:
        assert f"  gpg: {first_line([gpg, '--version'])} ({gpg})" in lines


def test_no_command_prints_the_help_and_a_bad_format_is_refused(run_stoq: Run) -> None:
    proc = run_stoq("-v")
    assert (proc.returncode, proc.stdout) == (2, b"") and b"Missing command" in proc.stderr
    proc = run_stoq("--version", "--format", "yaml")
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert proc.stderr.decode() == "stoq: --format must be text or json, not 'yaml'\n"


def test_a_missing_program_is_named_with_its_package(run_stoq: Run, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # links to every program the plugins run but 7z
    bin_dir.mkdir()
    declared = {t.command for e in Registry.discover().entries.values() if e.cls for t in e.cls.tools}
    for command in declared - {"7z"}:
        found = shutil.which(command, path=tool_path())
        if found:
            (bin_dir / command).symlink_to(found)
    proc = run_stoq("--version", env={"STOQ_TOOL_PATH": str(bin_dir)})
    assert proc.returncode == 0, proc.stderr
    assert "  7z: MISSING (Debian: apt-get install p7zip-full)" in proc.stdout.decode().splitlines()
    proc = run_stoq("--version", "-f", "json", env={"STOQ_TOOL_PATH": str(bin_dir)})
    (row,) = [t for t in json.loads(proc.stdout)["tools"] if t["command"] == "7z"]
    assert row == {"command": "7z", "package": "p7zip-full", "path": None, "version": None, "plugins": ["decompress"]}
