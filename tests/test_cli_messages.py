"""Messages in the user's words, through the real ``stoq`` command: each names the option, the file or
the database concerned, without library internals (pydantic's text and links, SQLAlchemy's
"Background on this error"); exact stderr lines and exit codes."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Callable

import pytest

from helpers import PG_URL
from test_cli_options import sample  # noqa: F401  (the fixture: a small text file)

Run = Callable[..., subprocess.CompletedProcess[bytes]]


def stderr_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    return proc.stderr.decode().splitlines()


def test_a_missing_rule_file_is_named_with_its_option(run_stoq: Run, sample: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.rules=/nonexistent/rules.yar")
    assert (proc.returncode, stderr_lines(proc), proc.stdout) == (4, [
        "stoq: plugin 'yara' cannot start: setup failed: option yara.rules=/nonexistent/rules.yar: No such file or directory"], b"")


def test_a_rule_directory_that_does_not_compile_names_file_and_line(run_stoq: Run, sample: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "apt").mkdir(parents=True)
    (rules / "good.yar").write_text("rule good { condition: true }\n")
    (rules / "apt" / "broken.yara").write_text("rule broken {\n  condition:\n    true and\n}\n")
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", f"yara.rules={rules}")
    assert (proc.returncode, stderr_lines(proc), proc.stdout) == (4, [
        f"stoq: plugin 'yara' cannot start: setup failed: RuleError: {rules.resolve() / 'apt' / 'broken.yara'} "
        "line 4: syntax error, unexpected '}'"], b"")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", f"yara.rules={empty}")
    assert (proc.returncode, stderr_lines(proc)) == (4, [
        f"stoq: plugin 'yara' cannot start: setup failed: RuleError: {empty}: no rule files (*.yar, *.yara) "
        "in this directory"])


def test_an_unknown_option_names_the_valid_ones(run_stoq: Run, sample: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.nosuch=1")
    assert (proc.returncode, stderr_lines(proc)) == (4, [
        "stoq: plugin 'yara' has no option 'nosuch'; valid: externals, max_strings, recheck, rules, timeout"])
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.rule=x.yar")
    assert (proc.returncode, stderr_lines(proc)) == (4, [
        "stoq: plugin 'yara' has no option 'rule' (did you mean 'rules'?); valid: externals, max_strings, recheck, rules, timeout"])


def test_a_bad_value_names_the_option_and_the_value(run_stoq: Run, sample: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", "-w", "yara", "-o", "yara.timeout=soon")
    assert (proc.returncode, stderr_lines(proc)) == (4, [
        "stoq: option yara.timeout='soon': Input should be a valid integer, unable to parse string as an integer"])


def test_a_bad_setting_names_the_setting(run_stoq: Run, sample: Path, tmp_path: Path) -> None:
    proc = run_stoq("scan", str(sample), "--no-store", env={"STOQ_TIMEOUT": "0"})
    assert (proc.returncode, stderr_lines(proc)) == (4, ["stoq: setting timeout='0': Input should be greater than 0"])
    (tmp_path / "stoq.toml").write_text("[stoq]\nmax_dept = 3\n")
    proc = run_stoq("scan", str(sample), "--no-store")
    (line,) = stderr_lines(proc)
    assert proc.returncode == 4
    assert line.startswith("stoq: there is no setting 'max_dept' (did you mean 'max_depth'?); valid: archive, ")


@pytest.mark.postgres
def test_a_database_that_cannot_be_opened_is_named_without_sqlalchemy_links(run_stoq: Run, sample: Path) -> None:
    name = f"stoq_absent_{uuid.uuid4().hex[:8]}"
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    proc = run_stoq("results", "0" * 64, env={"STOQ_DATABASE_URL": url})
    assert (proc.returncode, stderr_lines(proc)) == (5, [
        f"stoq: cannot open the store {url}: connection to server at \"127.0.0.1\", port 5432 failed: "
        f"FATAL: database \"{name}\" does not exist"])
    proc = run_stoq("scan", str(sample), env={"STOQ_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/x"})
    assert proc.returncode == 5 and "sqlalche.me" not in proc.stderr.decode()
    assert stderr_lines(proc) == [
        "stoq: cannot open the store postgresql+psycopg2://postgres@127.0.0.1:1/x: connection to server at "
        "\"127.0.0.1\", port 1 failed: Connection refused Is the server running on that host and accepting "
        "TCP/IP connections?"]
    # -v: the library's own words go to the log
    proc = run_stoq("-v", "results", "0" * 64, env={"STOQ_DATABASE_URL": url})
    assert "sqlalche.me" in proc.stderr.decode()
