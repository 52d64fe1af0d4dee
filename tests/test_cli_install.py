"""``stoq install`` / ``stoq uninstall`` with real packages built here: a plugin package (a worker that
reports a payload's SHA3-256), and a package without any stoq plugin that pulls in a dependency. Both
are installed from their paths into this test venv by pip (``--no-index --no-build-isolation``: no
network); the venv is shared by the whole suite, so every distribution made here is uninstalled when
the module ends, whatever happened."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from textwrap import dedent
from typing import Callable, Iterator

import pytest

Run = Callable[..., subprocess.CompletedProcess[bytes]]
#: Every distribution this module may install (canonical names).
MADE = ("stoq-test-sha3probe", "stoq-test-noplugin", "stoq-test-noplugin-dep")
NO_NETWORK = ("--no-index", "--no-build-isolation")
#: Under xdist each test runs alone: a plugin installed meanwhile would show in other tests' plugin lists.
pytestmark = pytest.mark.alone


def pip_list() -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                          capture_output=True, check=True)
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(done.stdout)}


def project(root: Path, name: str, module: str, code: str, *, entry: str | None = None,
            depends: str | None = None) -> Path:
    """A setuptools project in ``root``: one module, optionally a ``stoq.plugins`` entry point."""
    root.mkdir()
    (root / f"{module}.py").write_text(dedent(code))
    toml = dedent(f"""\
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "0.3.1"
        dependencies = [{f'"{depends}"' if depends else ''}]

        [tool.setuptools]
        py-modules = ["{module}"]
        """)
    if entry:
        toml += f'\n[project.entry-points."stoq.plugins"]\n{entry}\n'
    (root / "pyproject.toml").write_text(toml)
    return root


PLUGIN = '''\
    """A test plugin installed by stoq install."""

    import hashlib

    from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin


    class Sha3Probe(WorkerPlugin):
        """Reports the SHA3-256 of a payload."""

        name = "sha3probe"
        version = "0.3"

        class Options(PluginOptions):
            pass

        def scan(self, payload: Payload, options: Options) -> Result:
            return Result(data={"sha3_256": hashlib.sha3_256(payload.content).hexdigest()})
    '''


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The projects, and a wheel directory holding the no-plugin package's dependency; uninstalls
    everything this module installs at the end."""
    root = tmp_path_factory.mktemp("packages")
    project(root / "plugin", "stoq-test-sha3probe", "stoq_test_sha3probe", PLUGIN,
            entry='sha3probe = "stoq_test_sha3probe:Sha3Probe"')
    dep = project(root / "dep", "stoq-test-noplugin-dep", "stoq_test_noplugin_dep", "VALUE = 1\n")
    project(root / "noplugin", "stoq-test-noplugin", "stoq_test_noplugin", "import stoq_test_noplugin_dep\n",
            depends="stoq-test-noplugin-dep")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *NO_NETWORK, "-q", "-w",
                            str(root / "wheels"), str(dep)], capture_output=True)
    assert built.returncode == 0, built.stderr
    assert not set(MADE) & set(pip_list())
    try:
        yield root
    finally:
        left = sorted(set(MADE) & set(pip_list()))
        if left:
            subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", *left], capture_output=True)


def test_install_shows_the_plugin_scan_runs_it_uninstall_removes_it(run_stoq: Run, packages: Path,
                                                                    tmp_path: Path) -> None:
    proc = run_stoq("install", str(packages / "plugin"), *NO_NETWORK)
    assert proc.returncode == 0, proc.stderr
    listed = "  sha3probe      0.3      Reports the SHA3-256 of a payload."
    assert proc.stdout.decode().splitlines() == ["worker:", listed]
    assert "stoq: installed stoq-test-sha3probe 0.3.1: 1 plugin(s)" in proc.stderr.decode()
    assert pip_list()["stoq-test-sha3probe"] == "0.3.1"

    proc = run_stoq("list")
    assert proc.returncode == 0 and listed in proc.stdout.decode().splitlines()
    proc = run_stoq("list", "sha3probe", "--format", "json")
    (row,) = json.loads(proc.stdout)
    assert (row["distribution"], row["category"], row["error"]) == ("stoq-test-sha3probe", "worker", None)

    sample = tmp_path / "sample.txt"
    sample.write_bytes(b"scanned by an installed plugin\n")
    proc = run_stoq("scan", str(sample), "--workers", "sha3probe", "--no-store")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["results"][0]["workers"]["sha3probe"]["sha3_256"] == hashlib.sha3_256(sample.read_bytes()).hexdigest()

    proc = run_stoq("uninstall", "sha3probe")  # by plugin name
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["worker:", listed]
    assert "stoq-test-sha3probe" not in pip_list()
    proc = run_stoq("list")
    assert b"sha3probe" not in proc.stdout
    proc = run_stoq("scan", str(sample), "--workers", "sha3probe", "--no-store")
    assert proc.returncode == 4 and b"unknown plugin 'sha3probe'" in proc.stderr


def test_install_json_and_uninstall_by_distribution_name(run_stoq: Run, packages: Path) -> None:
    proc = run_stoq("install", str(packages / "plugin"), *NO_NETWORK, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["added"] == {"stoq-test-sha3probe": "0.3.1"} and got["changed"] == {}
    assert [p["name"] for p in got["plugins"]] == ["sha3probe"]
    proc = run_stoq("install", str(packages / "plugin"), *NO_NETWORK)  # the same version again: nothing new
    assert proc.returncode == 0 and proc.stdout == b""
    proc = run_stoq("uninstall", "Stoq_Test_Sha3probe", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed"] == {"stoq-test-sha3probe": "0.3.1"}
    assert "stoq-test-sha3probe" not in pip_list()


def test_a_package_without_a_plugin_is_refused_and_removed_with_its_dependency(run_stoq: Run, packages: Path) -> None:
    before = pip_list()
    proc = run_stoq("install", str(packages / "noplugin"), *NO_NETWORK, "--find-links", str(packages / "wheels"))
    assert (proc.returncode, proc.stdout) == (7, b"")
    assert proc.stderr.decode().splitlines()[-1] == (
        f"stoq: {packages / 'noplugin'} brings no stoq plugin (no entry point in the 'stoq.plugins' group): "
        "refused, and the 2 distribution(s) it installed were removed (stoq-test-noplugin, stoq-test-noplugin-dep)")
    assert pip_list() == before


def test_uninstall_refuses_stoq_its_plugins_and_other_packages(run_stoq: Run) -> None:
    before = pip_list()
    for name, code, message in (
            ("yara", 2, "stoq: 'yara' is bundled with stoq: refused (pip uninstall stoq-analysis removes stoq and all its plugins)"),
            ("stoq-analysis", 2, "stoq: stoq cannot uninstall itself: refused (pip uninstall stoq-analysis removes stoq and all its plugins)"),
            ("sqlalchemy", 2, "stoq: 'sqlalchemy' is not a plugin package (it declares no stoq plugin): refused; use pip for other packages"),
            ("yarra", 6, "stoq: no plugin or distribution 'yarra' is installed (did you mean 'yara'?)")):
        proc = run_stoq("uninstall", name)
        assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (code, b"", message + "\n"), name
    assert pip_list() == before


def test_pip_failing_is_exit_code_7(run_stoq: Run, tmp_path: Path) -> None:
    proc = run_stoq("install", str(tmp_path / "nowhere"), *NO_NETWORK)
    assert (proc.returncode, proc.stdout) == (7, b"")
    assert proc.stderr.decode().splitlines()[-1] == f"stoq: pip could not install {tmp_path / 'nowhere'} (its messages are above)"
