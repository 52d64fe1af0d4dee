"""What reaches the analyst's terminal: names, paths and messages a hostile file controls are shown
escaped (``\\n``, ``\\x1b``, ``\\u202e``), never interpreted. The tables are produced by the real
``stoq scan --format table`` command; expected lines are written out by hand, hashes from hashlib."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable

from helpers import make_zip
from stoq.cli.output import table
from stoq.terminal import EscapingFilter, SafeFormatter, safe
from test_cli_options import far_worker  # noqa: F401  (the fixture: a worker in its own directory)

Run = Callable[..., subprocess.CompletedProcess[bytes]]

SPOOF = "evil.txt  text/plain …\n      yara: totally_benign\n  x"
ANSI = "\x1b[31mred\x1b[0m\x1b]0;title\x07"
BIDI = "invoice\u202efdp.exe"
MARKUP = "[red]marked[/red] [link=http://x]y[/link]"


def short(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def payload_lines(stdout: bytes) -> list[str]:
    """The table's lines without the scan header and the blank line that ends a scan."""
    lines = stdout.decode().split("\n")
    assert lines[0].startswith("scan "), lines[0]
    assert lines[-2:] == ["", ""], lines[-3:]
    return lines[1:-2]


def test_a_member_name_cannot_forge_table_lines(run_stoq: Run, tmp_path: Path) -> None:
    body, other = b"hello\n", b"second member\n"
    archive = make_zip({SPOOF: body, "copy.txt": body, "real.txt": other})
    (tmp_path / "spoof.zip").write_bytes(archive)
    proc = run_stoq("scan", "spoof.zip", "--no-store", "--format", "table")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    lines = payload_lines(proc.stdout)
    name = "evil.txt  text/plain …\\n      yara: totally_benign\\n  x"
    assert lines == [
        f"  spoof.zip  application/zip  {len(archive)} B  sha256:{short(archive)}  plugins:decompress,trailer",
        f"    {name}  text/plain  6 B  sha256:{short(body)}  plugins:-",
        f"    copy.txt  text/plain  6 B  sha256:{short(body)}  plugins:-  (duplicate of spoof.zip > {name})",
        f"    real.txt  text/plain  14 B  sha256:{short(other)}  plugins:-",
    ]
    assert not any(line.lstrip().startswith("yara:") for line in lines)


def test_escape_sequences_bidi_and_markup_are_shown_as_text(run_stoq: Run, tmp_path: Path) -> None:
    data = {ANSI: b"one\n", BIDI: b"two\n", MARKUP: b"three\n", "back\\slash\x7f\x85": b"four\n"}
    archive = make_zip(data)
    (tmp_path / "esc.zip").write_bytes(archive)
    proc = run_stoq("scan", "esc.zip", "--no-store", "--format", "table")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    for raw in ("\x1b", "\x07", "\u202e", "\x7f", "\x85"):
        assert raw not in out
    assert payload_lines(proc.stdout)[1:] == [
        f"    \\x1b[31mred\\x1b[0m\\x1b]0;title\\x07  text/plain  4 B  sha256:{short(b'one' + bytes([10]))}  plugins:-",
        f"    invoice\\u202efdp.exe  text/plain  4 B  sha256:{short(b'two' + bytes([10]))}  plugins:-",
        f"    [red]marked[/red] [link=http://x]y[/link]  text/plain  6 B  sha256:{short(b'three' + bytes([10]))}  plugins:-",
        f"    back\\\\slash\\x7f\\x85  text/plain  5 B  sha256:{short(b'four' + bytes([10]))}  plugins:-",
    ]
    # JSON output is data: the names come back exactly, escaped by the JSON encoder only.
    proc = run_stoq("scan", "esc.zip", "--no-store", "--format", "jsonl")
    names = [p["filename"] for p in json.loads(proc.stdout)["results"][1:]]
    assert names == list(data)


def test_a_message_naming_a_hostile_path_is_one_line(run_stoq: Run) -> None:
    proc = run_stoq("scan", "/nonexistent\nstoq: all clean \x1b[2J", "--no-store")
    assert proc.returncode == 3
    assert proc.stderr.decode().split("\n") == [
        "stoq: /nonexistent\\nstoq: all clean \\x1b[2J: no such file or directory", ""]


def test_error_lines_of_the_table_are_escaped() -> None:
    doc = {"scan_id": "s", "date": "d", "payloads": 1, "source": {"path": "/in/a\nb"},
           "results": [{"payload_id": "p1", "parent_id": None, "depth": 0, "filename": "a\u2028b",
                        "duplicate_of": None, "workers": {}, "flags": ["odd:\x1b"], "mime": "text/plain",
                        "size": 1, "sha256": "0" * 64}],
           "errors": [{"kind": "error", "plugin": "x", "payload_id": "p1", "message": "bad\n  ! forged"}]}
    assert table(doc).split("\n") == [
        "scan s  d  1 payload(s)  /in/a\\nb",
        "  a\\u2028b  text/plain  1 B  sha256:0000000000000000  plugins:-  [odd:\\x1b]",
        "  ! error in x on a\\u2028b: bad\\n  ! forged",
        "", ""]


def test_safe() -> None:
    assert safe("plain name.txt") == "plain name.txt"
    assert safe("é ü 日本 🙂") == "é ü 日本 🙂"
    assert safe("a\tb\rc\nd\\e") == "a\\tb\\rc\\nd\\\\e"
    assert safe("\x00\x1b\x7f\x80\x9f") == "\\x00\\x1b\\x7f\\x80\\x9f"
    assert safe("\u200b\u200e\u202a\u202e\u2066\ufeff") == "\\u200b\\u200e\\u202a\\u202e\\u2066\\ufeff"
    assert safe("x\udcff") == "x\\udcff"  # a non-UTF-8 byte kept by surrogateescape
    assert safe("\U000e0041") == "\\U000e0041"  # a tag character (format)
    assert safe(3) == "3"


def test_log_lines_are_escaped() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("stoq: %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("stoq.test.terminal")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("member '%s' skipped: %s", "a\nb", "\x1b[31mred")
        try:
            raise ValueError("in\nside\x1b")
        except ValueError:
            log.exception("failed on %s", "x\ny")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    assert lines[0] == "stoq: WARNING stoq.test.terminal: member 'a\\nb' skipped: \\x1b[31mred"
    assert lines[1] == "stoq: ERROR stoq.test.terminal: failed on x\\ny"
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-2] == "ValueError: in\\nside\\x1b"
    record = logging.makeLogRecord({"msg": "task %s", "args": ("a\nb",)})
    assert EscapingFilter().filter(record) and record.getMessage() == "task a\\nb"


def test_python_warnings_go_through_the_escaping_log(tmp_path: Path) -> None:
    code = ("import warnings; from stoq.cli import _root; _root(0)\n"
            "warnings.warn('bad\\nname\\x1b')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=tmp_path)
    lines = [line for line in proc.stderr.decode().split("\n") if "bad" in line]
    assert len(lines) == 1 and "UserWarning: bad\\nname\\x1b" in lines[0], proc.stderr


def test_worker_log_lines_are_escaped(far_worker: object, tmp_path: Path) -> None:
    """What a worker logs about a submission (the task's arguments: file names, at debug level; a
    refusal's reason) is escaped: nothing in it can add a log line or reach a terminal raw. Needs
    Redis, PostgreSQL and a worker: run under the lock."""
    env = far_worker.env  # type: ignore[attr-defined]
    log = far_worker.log  # type: ignore[attr-defined]
    stoq = str(Path(sys.executable).parent / "stoq")
    forged = "\n[2026-01-01 00:00:00,000: ERROR MainProcess] forged \x1b[2J line"
    name = "ok.txt" + forged
    (tmp_path / name).write_bytes(b"a file with a hostile name\n")
    proc = subprocess.run([stoq, "submit", str(tmp_path / name), "--format", "jsonl"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([stoq, "submit", str(tmp_path / name), "-w", "yara", "-o", f"yara.rules=/nonexistent{forged}"],
                          env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.decode().count("\n") == 1  # the client's own message: one line, escaped
    text = log.read_text()
    assert "option yara.rules=/nonexistent\\n[2026-01-01 00:00:00,000: ERROR MainProcess] forged \\x1b[2J line" in text
    assert "\x1b" not in text
    assert not any(line.startswith("[2026-01-01 00:00:00,000") for line in text.splitlines())


def test_templates_have_a_terminal_filter(run_stoq: Run, tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{% for p in doc.results %}{{ p.filename | terminal }}|{% endfor %}\n")
    (tmp_path / "esc.zip").write_bytes(make_zip({"a\nb\x1b.txt": b"x"}))
    proc = run_stoq("scan", "esc.zip", "--no-store", "--template", "t.j2")
    assert (proc.returncode, proc.stdout) == (0, b"esc.zip|a\\nb\\x1b.txt|\n")
