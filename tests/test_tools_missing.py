"""External tools found, or named: on a machine without a program a plugin runs, the payload gets an
error entry of kind ``tool-missing`` whose message names the program and its Debian package, and the
flag ``tool:missing``, in both modes; ``stoq doctor`` reports each plugin's readiness.

A machine without 7z (or gpg) is made with ``STOQ_TOOL_PATH``: a directory of links to every program
the bundled plugins declare, less the one left out."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import CORPUS, ROOT
from stoq.plugin import Tool, ToolMissing
from stoq.registry import Registry
from stoq.runner import run_plugin

Run = Callable[..., subprocess.CompletedProcess[bytes]]
NO_7Z = "7z is not installed (Debian: apt-get install p7zip-full)"
NO_GPG = "gpg is not installed (Debian: apt-get install gnupg)"


def declared_tools() -> list[Tool]:
    return [t for e in Registry.discover().entries.values() if e.cls is not None for t in e.cls.tools]


def bin_without(where: Path, *left_out: str) -> str:
    """A directory holding links to every declared program (and gpg's helpers) but ``left_out``."""
    where.mkdir()
    for command in {t.command for t in declared_tools()} | {"gpgconf", "gpg-agent"}:
        found = shutil.which(command, path="/usr/bin:/bin")
        if command not in left_out and found:
            (where / command).symlink_to(found)
    return str(where)


def only(out: bytes) -> dict[str, Any]:
    (doc,) = [json.loads(line) for line in out.splitlines()]
    return doc


def test_the_runner_records_a_missing_tool_by_name() -> None:
    def call() -> None:
        raise ToolMissing("7z", "p7zip-full")
    outcome = run_plugin("decompress", call, "p1", 10)
    assert outcome is not None and outcome.result is None
    assert outcome.error is not None and outcome.error.as_dict() == {
        "payload_id": "p1", "plugin": "decompress", "kind": "tool-missing", "message": NO_7Z}


def test_every_declared_tool_has_its_package_in_ci() -> None:
    from helpers import TOOL_PACKAGES
    from stoq_plugins.decompress.tools import TOOL_FORMATS, TOOLS
    from stoq_plugins.decompress import DecompressPlugin

    assert set(TOOL_FORMATS.values()) <= set(TOOLS)  # a tool added for a format is declared, with its package
    assert DecompressPlugin.tools == tuple(TOOLS.values())

    ci = set((ROOT / ".ci" / "apt-packages").read_text().split())
    for tool in declared_tools():
        assert tool.package in ci, tool
        assert TOOL_PACKAGES[tool.command] == tool.package, tool
    assert set(TOOL_PACKAGES.values()) - {"file"} <= ci


@pytest.mark.tools("7z")
def test_embedded_scan_without_7z(run_stoq: Run, tmp_path: Path) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.7z"), env={"STOQ_TOOL_PATH": bin_without(tmp_path / "bin", "7z")})
    assert proc.returncode == 1, proc.stderr.decode()
    doc = only(proc.stdout)
    root = doc["results"][0]
    assert doc["errors"] == [{"payload_id": root["payload_id"], "plugin": "decompress", "kind": "tool-missing",
                              "message": NO_7Z}]
    assert root["flags"] == ["tool:missing"] and doc["payloads"] == 1
    with_7z = only(run_stoq("scan", str(CORPUS / "test.7z")).stdout)  # the same file where 7z is found
    assert with_7z["errors"] == [] and with_7z["results"][0]["flags"] == [] and with_7z["payloads"] > 1


@pytest.mark.tools("7z")
def test_aes_zip_without_7z_keeps_what_zipfile_read_and_says_why(run_stoq: Run, tmp_path: Path) -> None:
    name = "test_aes256_password.zip"
    proc = run_stoq("scan", str(CORPUS / name), env={"STOQ_TOOL_PATH": bin_without(tmp_path / "bin", "7z")})
    doc = only(proc.stdout)
    assert doc["errors"] == []
    assert doc["results"][0]["flags"] == ["password:unsupported-encryption", "tool:missing"]


@pytest.mark.tools("gpg")
def test_gpg_without_gpg(run_stoq: Run, tmp_path: Path) -> None:
    proc = run_stoq("scan", str(CORPUS / "test.txt.gpg"), env={"STOQ_TOOL_PATH": bin_without(tmp_path / "bin", "gpg")})
    doc = only(proc.stdout)
    root = doc["results"][0]
    assert doc["errors"] == [{"payload_id": root["payload_id"], "plugin": "gpg", "kind": "tool-missing",
                              "message": NO_GPG}]
    assert root["flags"] == ["tool:missing"]


@pytest.mark.postgres
@pytest.mark.tools("7z")
def test_cluster_scan_without_7z(tmp_path: Path, testplugins_site: Path) -> None:
    from test_cluster import cluster_env, fresh_database, start

    db = "stoq_test_tools"
    fresh_database(db)
    env = cluster_env(tmp_path, testplugins_site, (8, 9), db) | {"STOQ_TOOL_PATH": bin_without(tmp_path / "bin", "7z")}
    bin_dir = Path(sys.executable).parent
    assert subprocess.run([str(bin_dir / "stoq"), "db", "upgrade"], env=env, capture_output=True).returncode == 0
    cluster = start(tmp_path, env, "-c", "1")
    try:
        proc = cluster.stoq("submit", "--wait", str(CORPUS / "test.7z"), timeout=120)
    finally:
        cluster.stop()
    assert proc.returncode == 1, proc.stderr.decode()
    doc = only(proc.stdout)
    root = doc["results"][0]
    assert doc["errors"] == [{"payload_id": root["payload_id"], "plugin": "decompress", "kind": "tool-missing",
                              "message": NO_7Z}]
    assert root["flags"] == ["tool:missing"]


@pytest.mark.tools("7z", "unar", "lsar", "bsdtar", "bsdcat", "gpg")
def test_doctor(run_stoq: Run, tmp_path: Path) -> None:
    banner = subprocess.run(["7z"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}).stdout
    first = next(line.strip() for line in banner.splitlines() if line.strip())
    ready = run_stoq("doctor")
    assert ready.returncode == 0, ready.stdout.decode()
    lines = ready.stdout.decode().splitlines()
    assert "decompress (extractor) ready" in lines
    assert f"  tool 7z: {shutil.which('7z', path='/usr/bin:/bin')} {first}" in lines
    plugins = len([line for line in lines[:-1] if not line.startswith(" ")])
    assert lines[-1] == f"{plugins} of {plugins} plugins ready"

    env = {"STOQ_TOOL_PATH": bin_without(tmp_path / "bin", "7z")}
    missing = run_stoq("doctor", env=env)
    assert missing.returncode == 4
    lines = missing.stdout.decode().splitlines()
    at = lines.index("decompress (extractor) NOT READY")
    assert lines[at + 1] == "  tool 7z: MISSING (Debian: apt-get install p7zip-full)"
    assert lines[-1].endswith("plugins ready; to install: apt-get install p7zip-full")

    report = json.loads(run_stoq("doctor", "--format", "json", env=env).stdout)
    assert report["tool_path"] == env["STOQ_TOOL_PATH"]
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["decompress"]["ready"] is False
    assert by_name["decompress"]["tools"][0] == {"command": "7z", "package": "p7zip-full", "path": None,
                                                 "version": None}
    assert by_name["gpg"]["ready"] is True
    assert [p["name"] for p in report["plugins"] if not p["ready"]] == ["decompress"]


def test_doctor_names_a_missing_rule_file(run_stoq: Run, tmp_path: Path) -> None:
    rules = str(tmp_path / "nope.yar")
    proc = run_stoq("doctor", "-o", f"yara.rules={rules}", "--format", "json")
    assert proc.returncode == 4
    yara = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}["yara"]
    assert yara["ready"] is False and yara["files"] == [{"option": "rules", "path": rules, "exists": False}]
    assert yara["setup_error"].startswith("setup failed: ")


def test_doctor_takes_a_rule_directory(run_stoq: Run, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "sub").mkdir(parents=True)
    (rules / "sub" / "a.yar").write_text('rule a { condition: filename == "x" }\n')
    proc = run_stoq("doctor", "-o", f"yara.rules={rules}", "--format", "json")
    yara = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}["yara"]
    assert (yara["ready"], yara["setup_error"]) == (True, None)
    assert yara["files"] == [{"option": "rules", "path": str(rules), "exists": True}]


def test_setup_names_the_packages_where_it_cannot_install_them(tmp_path: Path) -> None:
    """``.ci/install-tools`` (run by ``make setup``) on a system without dpkg/apt-get: one line naming
    every package, and the set-up goes on (exit 0); with --strict (CI) it fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in ("bash", "dirname", "grep", "id", "cat"):
        found = shutil.which(command)
        assert found is not None
        (bin_dir / command).symlink_to(found)
    packages = (ROOT / ".ci" / "apt-packages").read_text().split()
    line = ("stoq: cannot install the external tools (not Debian or Ubuntu); install these packages or their "
            f"equivalents: {' '.join(packages)}\n")
    env = {"PATH": str(bin_dir)}
    script = str(ROOT / ".ci" / "install-tools")
    lenient = subprocess.run([script], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (lenient.returncode, lenient.stdout, lenient.stderr) == (0, "", line)
    strict = subprocess.run([script, "--strict"], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (strict.returncode, strict.stderr) == (1, line)
