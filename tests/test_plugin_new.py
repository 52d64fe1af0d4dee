"""``stoq plugin new``: the skeleton it writes passes its own test unchanged, declares an entry point that
``stoq list`` and ``stoq scan`` find once the project is installed, and nothing is ever overwritten.

The skeleton is installed by pip into a directory of its own (``--target``, put on PYTHONPATH), as
test_packaging installs a third-party plugin: the project venv is left untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from helpers import CORPUS
from test_packaging import pip, setuptools_builds_wheels_here

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def install(project: Path, site: Path) -> dict[str, str]:
    """``pip install --no-deps --target site project``, as a user installs the skeleton (built from its
    own pyproject.toml); the environment in which stoq sees it."""
    isolation = ["--no-build-isolation"] if setuptools_builds_wheels_here() else []
    pip("install", "--no-deps", *isolation, "--target", str(site), str(project), cwd=project.parent)
    assert not (site / "stoq").exists()  # the plugin alone was installed, nothing of stoq's
    return {"PYTHONPATH": str(site)}


def own_tests(project: Path) -> subprocess.CompletedProcess[str]:
    """The skeleton's tests, run by pytest in the project directory, its package on the path."""
    env = dict(os.environ, PYTHONPATH=str(project))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_skeleton_passes_its_test_and_is_listed_and_runs(tmp_path: Path, run_stoq: Run) -> None:
    proc = run_stoq("plugin", "new", "demo_plugin")
    assert proc.returncode == 0, proc.stderr.decode()
    project = tmp_path / "demo_plugin"
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "stoq_demo_plugin/__init__.py", "stoq_demo_plugin/plugin.py",
        "tests/test_demo_plugin.py"]
    tests = own_tests(project)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr

    env = install(project, tmp_path / "site")
    proc = run_stoq("list", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    [row] = [r for r in json.loads(proc.stdout) if r["name"] == "demo_plugin"]
    assert (row["category"], row["version"], row["distribution"], row["error"]) == (
        "worker", "0.1.0", "stoq-plugin-demo-plugin", None)
    assert list(row["options"]) == ["head_bytes"]
    proc = run_stoq("doctor", "--format", "json", env=env)
    [row] = [r for r in json.loads(proc.stdout)["plugins"] if r["name"] == "demo_plugin"]
    assert (row["ready"], row["error"], row["setup_error"], row["tools"]) == (True, None, None, [])

    sample = CORPUS / "test.txt"
    content = sample.read_bytes()
    proc = run_stoq("scan", str(sample), "--no-store", "--workers", "demo_plugin", "-o", "demo_plugin.head_bytes=4", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["results"][0]["workers"] == {
        "demo_plugin": {"size": len(content), "lines": content.count(b"\n"), "head": content[:4].hex()}}
    # The name is now taken.
    proc = run_stoq("plugin", "new", "demo_plugin", "--dir", str(tmp_path / "again"), env=env)
    assert proc.returncode == 2 and b"already installed" in proc.stderr and not (tmp_path / "again").exists()


@pytest.mark.parametrize("category", ["carver", "extractor", "decoder", "reader"])
def test_every_category_gets_its_base_class_and_a_passing_test(category: str, tmp_path: Path, run_stoq: Run) -> None:
    proc = run_stoq("plugin", "new", f"my_{category}", "--category", category, "--dir", str(tmp_path / "p"))
    assert proc.returncode == 0, proc.stderr.decode()
    plugin = (tmp_path / "p" / f"stoq_my_{category}" / "plugin.py").read_text()
    assert f"class My{category.capitalize()}Plugin({category.capitalize()}Plugin):" in plugin
    tests = own_tests(tmp_path / "p")
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr


@pytest.mark.parametrize("name", ["Demo", "1demo", "demo-plugin", "class", "démo", "a" * 65, "yara", "decompress"])
def test_an_invalid_or_installed_name_is_refused(name: str, tmp_path: Path, run_stoq: Run) -> None:
    proc = run_stoq("plugin", "new", name, "--dir", str(tmp_path / "p"))
    assert proc.returncode == 2 and not (tmp_path / "p").exists()
    assert proc.stderr.decode().startswith(("stoq: invalid plugin name", "stoq: a plugin named"))


def test_an_existing_directory_is_never_written(tmp_path: Path, run_stoq: Run) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "pyproject.toml").write_text("mine")
    proc = run_stoq("plugin", "new", "demo_plugin", "--dir", str(target))
    assert proc.returncode == 2 and b"exists" in proc.stderr
    assert [p.name for p in target.iterdir()] == ["pyproject.toml"] and (target / "pyproject.toml").read_text() == "mine"
