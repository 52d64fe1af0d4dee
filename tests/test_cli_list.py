"""``stoq list PLUGIN``: a plugin's options with their types and defaults, in text and JSON; and the
help's type labels (no Python annotations such as ``<list[Path]>``)."""

from __future__ import annotations

import json
import subprocess
from typing import Callable

from stoq_plugins.yara import DEFAULT_RULES

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def test_list_plugin_shows_its_options(run_stoq: Run) -> None:
    proc = run_stoq("list", "yara")
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout.decode().splitlines() == [
        "yara (worker, version 1.1, from stoq-analysis)",
        "  Matches payloads against YARA rules and reports the rules, tags, meta and matched strings.",
        "  options (-o yara.OPTION=VALUE):",
        f"    rules  path, default {DEFAULT_RULES}",
        "        YARA rule file, directory of rule files (*.yar, *.yara; one namespace per file), or index file of "
        "includes.",
        "    timeout  integer, default 30",
        "        YARA's own match time limit, in seconds (lowered to stay under the plugin's time limit).",
        "    max_strings  integer, default 32",
        "        Most string matches reported per rule.",
        "    recheck  number, default 10.0",
        "        Seconds between checks of the rule files for changes (they are recompiled when changed).",
        "    externals  NAME=VALUE pairs (integer or boolean or text), default {}",
        "        More external variables the rules use, with their default values (NAME=VALUE,...: an integer, "
        "true or false, else text).",
        "    time_limit  number, default the timeout setting (every plugin: seconds it may spend on one payload)",
        ""]


def test_list_plugin_as_json(run_stoq: Run) -> None:
    proc = run_stoq("list", "gpg", "decompress", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert sorted(rows) == ["decompress", "gpg"]
    assert rows["gpg"]["options"]["keyring"] == {
        "type": "path or none", "default": None,
        "description": "Exported key file (secret and/or public keys) imported for each scan; none: no keys."}
    assert rows["gpg"]["options"]["timeout"]["type"] == "number"
    assert rows["decompress"]["options"]["passwords"]["type"] == "list of text"
    assert rows["decompress"]["options"]["passwords"]["default"] == ["infected", "password"]


def test_list_an_unknown_plugin(run_stoq: Run) -> None:
    proc = run_stoq("list", "yarra")
    assert (proc.returncode, proc.stdout) == (6, b"")
    assert proc.stderr.decode() == "stoq: no plugin 'yarra' is installed (did you mean 'yara'?)\n"


def test_help_shows_types_readably(run_stoq: Run) -> None:
    for command in ("scan", "submit", "results", "list"):
        proc = run_stoq(command, "--help", env={"COLUMNS": "200"})
        text = proc.stdout.decode()
        assert proc.returncode == 0 and "Usage" in text
        assert "<bool>" not in text and "list[" not in text and "<str>" not in text and "<int" not in text, text
    text = run_stoq("scan", "--help", env={"COLUMNS": "200"}).stdout.decode()
    assert "PLUGIN.OPTION=VALUE" in text and "jsonl|json|table" in text and "INTEGER [x>=0]" in text
