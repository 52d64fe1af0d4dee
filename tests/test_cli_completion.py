"""Shell completion: the script ``stoq completion bash`` prints, sourced by a real (non-interactive)
bash and its completion function called as bash calls it on <TAB>; the zsh and fish scripts name the
same protocol."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

Run = Callable[..., subprocess.CompletedProcess[bytes]]
BIN = Path(sys.executable).parent


def complete(script: str, words: list[str], env: dict[str, str]) -> list[str]:
    """What bash's completion function puts in COMPREPLY for the command line ``words`` (the cursor at
    the end of the last word)."""
    program = (f"{script}\nCOMP_WORDS=({' '.join(map(repr, words))}); COMP_CWORD={len(words) - 1}\n"
               "_stoq_completion stoq\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True,
                          env=env | {"PATH": f"{BIN}:{os.environ['PATH']}"}, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.decode().splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_and_plugin_names(run_stoq: Run, stoq_env: dict[str, str]) -> None:
    proc = run_stoq("completion", "bash")
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.decode()
    assert "complete -o default -F _stoq_completion stoq" in script
    assert complete(script, ["stoq", "sc"], stoq_env) == ["scan"]
    assert complete(script, ["stoq", "d"], stoq_env) == ["doctor", "dirmon", "db"]  # in the order of the help
    assert complete(script, ["stoq", "scan", "--workers", "pei"], stoq_env) == ["peinfo"]
    assert complete(script, ["stoq", "scan", "-w", "yara,pe"], stoq_env) == ["yara,pe", "yara,peinfo"]
    assert complete(script, ["stoq", "submit", "--connectors", "js"], stoq_env) == ["jsonl"]
    # a connector is no worker, a worker no connector
    assert complete(script, ["stoq", "scan", "--workers", "js"], stoq_env) == []
    # -o: the plugin, then its options as `stoq list PLUGIN` lists them, time_limit last
    from stoq.registry import Registry

    yara = Registry.discover().entries["yara"].cls
    assert yara is not None
    assert complete(script, ["stoq", "scan", "-o", "yar"], stoq_env) == ["yara."]
    assert complete(script, ["stoq", "submit", "-o", "yara."], stoq_env) == [
        f"yara.{name}=" for name in [*yara.Options.model_fields, "time_limit"]]
    assert complete(script, ["stoq", "list", "pe"], stoq_env) == ["pe", "peinfo"]


def test_zsh_and_fish_scripts_call_stoq_back(run_stoq: Run) -> None:
    for shell in ("zsh", "fish"):
        proc = run_stoq("completion", shell)
        assert proc.returncode == 0, proc.stderr
        assert f"_STOQ_COMPLETE=complete_{shell}" in proc.stdout.decode()
    proc = run_stoq("completion", "tcsh")
    assert proc.returncode == 2
