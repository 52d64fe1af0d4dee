"""The distribution as a user gets it: a wheel built from the checkout, installed with pip into a
directory of its own and imported from outside the checkout; and a third-party plugin package that
``pip install`` alone makes visible to ``stoq list``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest

from helpers import CORPUS, ROOT

Run = Callable[..., subprocess.CompletedProcess[bytes]]
BUNDLED = ("yara", "peinfo", "decompress")
#: Never copied into the build tree: caches, VCS data, and a stale ``build/`` setuptools would reuse.
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 ".mypy_cache", ".ruff_cache", "out")


def pip(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_") and k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def setuptools_builds_wheels_here() -> bool:
    """True if this environment's setuptools can build a wheel without build isolation (it has
    bdist_wheel itself from 70.1 on, else needs the ``wheel`` package)."""
    try:
        version = tuple(int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return False
    if version >= (70, 1):
        return True
    try:
        importlib.metadata.version("wheel")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The project built as a wheel (from a copy of the checkout, so no build output lands in it) and
    installed with ``pip install --no-deps --target``. Built once per module."""
    base = tmp_path_factory.mktemp("packaging")
    src, wheels, site, work = base / "src", base / "wheels", base / "site", base / "work"
    shutil.copytree(ROOT, src, ignore=IGNORED)
    wheels.mkdir()
    work.mkdir()
    # The project needs a newer setuptools than the venv may hold: build isolated (from the local index).
    # -vv against pip()'s --quiet: the build backend's own output (its warnings) is kept.
    built = pip("wheel", "-vv", "--no-deps", "--wheel-dir", str(wheels), str(src), cwd=base)
    (base / "build.log").write_text(built.stdout + built.stderr)
    [wheel] = wheels.glob("stoq_analysis-*.whl")
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=base)
    return {"wheel": wheel, "site": site, "work": work, "build_log": base / "build.log"}


def test_the_build_configures_every_package_it_ships(installed: dict[str, Path]) -> None:
    """No setuptools warning that a directory it ships is "absent from the packages configuration"
    (it was, on every install, for the bundled rules); and the wheel holds the rule files."""
    log = installed["build_log"].read_text()
    assert "Created wheel for stoq-analysis" in log  # the backend's output is there to be read
    assert "absent from the `packages` configuration" not in log and "is absent from" not in log
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert sorted(n for n in names if n.startswith("stoq_plugins/rules/")) == [
        "stoq_plugins/rules/default.yar", "stoq_plugins/rules/dispatch.yar"]
    # A plugin's own package ships whole (setuptools leaves out a subpackage `packages` does not name)...
    assert sorted(n for n in names if n.startswith("stoq_plugins/decompress/")) == [
        f"stoq_plugins/decompress/{m}.py"
        for m in ("__init__", "ace", "ar", "budget", "formats", "plugin", "streams", "tar", "tools", "zip")]
    # ...and so does every other module of the checkout.
    sources = {p.relative_to(ROOT).as_posix() for top in ("stoq", "plugins") for p in (ROOT / top).rglob("*.py")}
    assert {n.replace("stoq_plugins/", "plugins/", 1) for n in names if n.endswith(".py")} == sources
    # The results view's templates and stylesheet (data, not modules) ship too.
    pages = {p.relative_to(ROOT).as_posix() for d in ("templates", "static") for p in (ROOT / "stoq" / "web" / d).iterdir()}
    assert {n for n in names if n.startswith(("stoq/web/templates/", "stoq/web/static/"))} == pages


PROBE = r"""
import importlib.metadata, importlib.util, json, sys
from pathlib import Path

import stoq
facts = {"celery_after_import_stoq": "celery" in sys.modules, "stoq": stoq.__file__}

import stoq_plugins
from stoq.dispatch import bundled_dispatch_rules
from stoq.registry import Registry
from stoq.store import HEAD_REVISION, alembic_config, upgrade
from alembic.script import ScriptDirectory

facts["stoq_plugins"] = stoq_plugins.__file__
facts["plugins_spec"] = None if importlib.util.find_spec("plugins") is None else str(importlib.util.find_spec("plugins").origin)
facts["dispatch_rules"] = str(bundled_dispatch_rules())
script = ScriptDirectory.from_config(alembic_config())
facts["migrations_dir"] = script.dir
facts["migration_heads"] = list(script.get_heads())
facts["head_revision"] = HEAD_REVISION
facts["upgraded_to"] = upgrade("sqlite:///" + str(Path("probe.db").resolve()))
dist = importlib.metadata.distribution("stoq-analysis")
facts["distribution_at"] = str(dist.locate_file(""))
facts["version"] = dist.version
facts["registry"] = {
    name: {"error": e.error, "category": e.category, "distribution": e.distribution,
           "module": sys.modules[e.cls.__module__].__file__ if e.cls else None}
    for name, e in Registry.discover().entries.items()
}
print(json.dumps(facts))
"""


def probe(installed: dict[str, Path]) -> dict[str, Any]:
    site, work = installed["site"], installed["work"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update({"PYTHONPATH": str(site), "HOME": str(work), "XDG_DATA_HOME": str(work / "data"),
                "XDG_CONFIG_HOME": str(work / "config")})
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def under(path: str | os.PathLike[str], parent: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(parent))


def test_installed_wheel_imports_from_its_site_not_the_checkout(installed: dict[str, Path]) -> None:
    site = installed["site"]
    facts = probe(installed)

    assert under(facts["stoq"], site) and not under(facts["stoq"], ROOT), facts["stoq"]
    assert under(facts["stoq_plugins"], site) and not under(facts["stoq_plugins"], ROOT), facts["stoq_plugins"]
    assert under(facts["distribution_at"], site)
    assert facts["celery_after_import_stoq"] is False

    # plugins/ installs as stoq_plugins only: no top-level `plugins` package anywhere.
    assert not (site / "plugins").exists() and not (site / "plugins.py").exists()
    assert facts["plugins_spec"] is None
    with zipfile.ZipFile(installed["wheel"]) as whl:
        names = whl.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert set(whl.read(top_level).decode().split()) == {"stoq", "stoq_plugins"}
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"stoq", "stoq_plugins"}

    # Bundled data files: the dispatch rules (the same bytes as in the checkout) and the migrations.
    rules = Path(facts["dispatch_rules"])
    assert under(rules, site) and rules.is_file()
    assert rules.read_bytes() == (ROOT / "plugins" / "rules" / "dispatch.yar").read_bytes()
    assert under(facts["migrations_dir"], site)
    shipped = sorted(p.name for p in (Path(facts["migrations_dir"]) / "versions").glob("*.py"))
    assert shipped == sorted(p.name for p in (ROOT / "stoq" / "migrations" / "versions").glob("*.py"))
    assert facts["migration_heads"] == [facts["head_revision"]]
    assert facts["upgraded_to"] == facts["head_revision"]  # the installed migrations actually run
    assert (Path(facts["migrations_dir"]) / "script.py.mako").is_file()

    # The registry finds the bundled plugins through the installed distribution's entry points.
    for name in BUNDLED:
        entry = facts["registry"][name]
        assert entry["error"] is None, (name, entry)
        assert entry["distribution"].replace("_", "-").lower() == "stoq-analysis"
        assert under(entry["module"], site), (name, entry["module"])
    assert facts["registry"]["decompress"]["category"] == "extractor"
    assert facts["registry"]["yara"]["category"] == facts["registry"]["peinfo"]["category"] == "worker"


def test_installed_wheel_scans(installed: dict[str, Path]) -> None:
    """The installed package's CLI scans a zip: plugins, dispatch and store all work from the wheel."""
    import hashlib

    site, work = installed["site"], installed["work"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOQ_")}
    env.update({"PYTHONPATH": str(site), "HOME": str(work), "XDG_DATA_HOME": str(work / "data"),
                "XDG_CONFIG_HOME": str(work / "config"), "STOQ_ARCHIVE": str(work / "archive"),
                "STOQ_DATABASE_URL": f"sqlite:///{work / 'scan.db'}"})
    sample = CORPUS / "test.zip"
    code = ("import os, sys, stoq.cli; f = os.path.realpath(stoq.cli.__file__); assert f.startswith(sys.argv[1]), f; "
            "sys.argv = ['stoq'] + sys.argv[2:]; stoq.cli.main()")
    proc = subprocess.run([sys.executable, "-c", code, os.path.realpath(site), "scan", str(sample), "--workers", "yara"],
                          cwd=work, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    [line] = proc.stdout.decode().splitlines()
    doc = json.loads(line)
    with zipfile.ZipFile(sample) as zf:
        members = [hashlib.sha256(zf.read(i)).hexdigest() for i in zf.infolist() if not i.is_dir()]
    assert [p["sha256"] for p in doc["results"]] == [hashlib.sha256(sample.read_bytes()).hexdigest(), *members]
    assert "yara" in doc["results"][0]["workers"] and "decompress" in doc["results"][0]["workers"]


THIRD_PARTY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "stoq-plugin-hello"
version = "0.3.1"
description = "A third-party stoq plugin for the tests."

[project.entry-points."stoq.plugins"]
hello = "stoq_hello:HelloPlugin"

[tool.setuptools]
py-modules = ["stoq_hello"]
"""

THIRD_PARTY_MODULE = '''\
"""A worker that lives in its own distribution."""

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin


class HelloPlugin(WorkerPlugin):
    """Greets every payload with its size."""

    name = "hello"
    version = "0.3.1"

    def scan(self, payload: Payload, options: PluginOptions) -> Result:
        return Result(data={"hello": payload.size})
'''


def test_third_party_plugin_installed_with_pip_is_listed(tmp_path: Path, run_stoq: Run) -> None:
    pkg, site = tmp_path / "stoq-plugin-hello", tmp_path / "thirdparty"
    pkg.mkdir()
    (pkg / "pyproject.toml").write_text(THIRD_PARTY_PYPROJECT)
    (pkg / "stoq_hello.py").write_text(THIRD_PARTY_MODULE)
    isolation = ["--no-build-isolation"] if setuptools_builds_wheels_here() else []
    pip("install", "--no-deps", *isolation, "--target", str(site), str(pkg), cwd=tmp_path)
    assert not (site / "stoq").exists()  # the plugin alone was installed, nothing of stoq's

    env = {"PYTHONPATH": str(site)}
    proc = run_stoq("list", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    hello = [line.split(None, 2) for line in lines if line.split() and line.split()[0] == "hello"]
    assert hello == [["hello", "0.3.1", "Greets every payload with its size."]]
    # Listed under its category, with the bundled workers.
    worker = lines.index("worker:")
    end = next((i for i in range(worker + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    section = {line.split()[0] for line in lines[worker + 1:end]}
    assert {"hello", "yara", "peinfo"} <= section

    proc = run_stoq("list", "--format", "json", env=env)
    [row] = [r for r in json.loads(proc.stdout) if r["name"] == "hello"]
    assert (row["distribution"], row["error"], row["category"]) == ("stoq-plugin-hello", None, "worker")

    # And it runs, by name, with no other step.
    sample = CORPUS / "test.txt"
    proc = run_stoq("scan", str(sample), "--workers", "hello", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["workers"] == {"hello": {"hello": sample.stat().st_size}}
