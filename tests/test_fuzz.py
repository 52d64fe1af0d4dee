"""The fuzz harnesses of ``tests/fuzz/`` (one per parsing plugin), each run for a fixed number of
inputs with a fixed seed: under atheris (libFuzzer, coverage-guided) when it is installed, else under
the harnesses' own seeded mutation loop. A finding (see ``tests/fuzz/_harness.py``) fails the test
and leaves the input under the test's ``tmp_path``. Longer runs: docs/reliability.md, "Fuzzing"."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.durability  # issue 15, test 9: `pytest -m durability` runs the harnesses too

HERE = Path(__file__).parent / "fuzz"
#: Inputs per harness in CI: a few seconds each (the slow parsers get fewer).
RUNS = {"pdf": 300, "email": 400, "peinfo": 600, "ole": 600, "decompress": 600}
DEFAULT_RUNS = 2000
ENGINE = "atheris" if importlib.util.find_spec("atheris") else "loop"


def harnesses() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def fuzz(script: Path, runs: int, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), "--runs", str(runs), "--seed", "1", "--artifacts",
                           str(tmp_path / "artifacts"), *extra], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_every_parsing_plugin_has_a_harness() -> None:
    assert harnesses() == ["b64", "b85", "bitrot", "decompress", "email", "ole", "pdf", "pe", "peinfo", "rot47",
                           "rtf", "swf", "xor"]


@pytest.mark.parametrize("name", harnesses())
def test_harness_finds_nothing(name: str, tmp_path: Path) -> None:
    runs = RUNS.get(name, DEFAULT_RUNS)
    got = fuzz(HERE / f"fuzz_{name}.py", runs, tmp_path)
    assert got.returncode == 0, got.stderr[-4000:]
    report = json.loads(got.stdout.strip().splitlines()[-1])
    assert (report["target"], report["engine"], report["runs"]) == (name, ENGINE, runs)
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


@pytest.mark.parametrize("engine", ["loop", "atheris"])
def test_a_planted_bug_is_found(engine: str, tmp_path: Path) -> None:
    """The machinery itself: a target that raises IndexError on any input holding a 0xFF byte is
    reported (exit status 1, the input saved) by both engines."""
    if engine == "atheris" and ENGINE != "atheris":
        pytest.skip("atheris is not installed")
    script = tmp_path / "fuzz_planted.py"
    script.write_text(f"""import sys
sys.path.insert(0, {str(HERE)!r})
from _harness import Target, main


def planted():
    def parse(data: bytes) -> None:
        if 0xFF in data:
            raise IndexError("planted")
    return parse


if __name__ == "__main__":
    main(Target("planted", "", "application/octet-stream", lambda: [b"hello world"], direct=planted))
""")
    got = fuzz(script, 100_000, tmp_path, "--engine", engine)
    assert got.returncode != 0, got.stderr
    assert "IndexError: planted" in got.stderr, got.stderr
    (found,) = (tmp_path / "artifacts").iterdir()
    assert 0xFF in found.read_bytes()
