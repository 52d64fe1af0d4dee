"""Templates: the sandbox, and the bundled templates' exact output on a scan of corpus files."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
import yara

from helpers import CORPUS, make_zip

from stoq.templates import TemplateFailure, compile_template, render

RULE = 'rule lorem { strings: $a = "Lorem" condition: $a }\nrule pipe { strings: $a = "a|b" condition: $a }\n'
#: Members whose names a spreadsheet or a Markdown table would misread; contents the rules match or not.
MEMBERS = {"=HYPERLINK(1).txt": b"Lorem ipsum, a spreadsheet formula name", "tab|le`x`.txt": b"a|b plain words"}


def test_the_sandbox_refuses_to_reach_python_internals(tmp_path: Path) -> None:
    """The classic escape from a string to every loaded class is refused (a plain Environment allows it)."""
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() | length }}"
    import jinja2

    assert int(jinja2.Environment().from_string(escape).render()) > 100  # what the sandbox prevents
    (tmp_path / "evil.j2").write_text(escape)
    template = compile_template(tmp_path / "evil.j2")
    with pytest.raises(TemplateFailure, match="access to attribute '__class__' of 'str' object is unsafe"):
        render(template, doc={})


def test_the_cli_template_is_sandboxed(run_stoq: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "evil.j2").write_text("{{ doc.__class__.__base__.__subclasses__() }}\n")
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--no-store", "--template", str(tmp_path / "evil.j2"))
    assert proc.returncode == 4 and proc.stdout == b""
    assert b"access to attribute '__class__' of 'dict' object is unsafe" in proc.stderr
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--no-store", "--template", "builtin:nope")
    assert proc.returncode == 4 and b"no bundled template 'nope' (bundled: csv, email, markdown, payloads)" in proc.stderr
    proc = run_stoq("scan", str(CORPUS / "test.txt"), "--no-store", "--template", str(tmp_path / "missing.j2"))
    assert proc.returncode == 4 and b"missing.j2: [Errno 2] No such file or directory" in proc.stderr


def test_html_templates_are_autoescaped(tmp_path: Path) -> None:
    (tmp_path / "t.html").write_text("<b>{{ name }}</b>")
    (tmp_path / "t.txt").write_text("<b>{{ name }}</b>")
    assert render(compile_template(tmp_path / "t.html"), name="<i>&") == "<b>&lt;i&gt;&amp;</b>"
    assert render(compile_template(tmp_path / "t.txt"), name="<i>&") == "<b><i>&</b>"


def expected_payloads(zip_path: Path) -> list[tuple[str | None, bytes]]:
    """(name, content) of each payload of the two scans, in document order, read with zipfile."""
    with zipfile.ZipFile(zip_path) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    return [("names.zip", zip_path.read_bytes()), *members, ("test.txt", (CORPUS / "test.txt").read_bytes())]


def stored(run_stoq: Callable[..., Any], sha256: str) -> dict[str, Any]:
    """The newest stored document whose root has this sha256."""
    proc = run_stoq("results", sha256, "--format", "jsonl")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()][-1]


def rules_of(content: bytes, rules: Any) -> list[str]:
    return [m.rule for m in rules.match(data=content)]


@pytest.mark.parametrize("name", ["csv", "payloads", "markdown"])
def test_bundled_templates_exact_output(name: str, run_stoq: Callable[..., Any], tmp_path: Path) -> None:
    (tmp_path / "rules.yar").write_text(RULE)
    zip_path = tmp_path / "names.zip"
    zip_path.write_bytes(make_zip(MEMBERS))
    proc = run_stoq("scan", str(zip_path), str(CORPUS / "test.txt"), "-w", "yara",
                    "-o", f"yara.rules={tmp_path / 'rules.yar'}", "--template", f"builtin:{name}")
    assert proc.returncode == 0, proc.stderr
    docs = [stored(run_stoq, hashlib.sha256(p.read_bytes()).hexdigest()) for p in (zip_path, CORPUS / "test.txt")]
    rules = yara.compile(source=RULE)
    payloads = expected_payloads(zip_path)
    # The ids, the dates and the tree's shape come from the documents; every other value from
    # zipfile, hashlib and yara-python.
    rows = [(doc, p) for doc in docs for p in doc["results"]]
    assert [p["filename"] for _, p in rows] == [n for n, _ in payloads]
    out = io.StringIO()
    if name == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["scan_id", "payload_id", "parent_id", "depth", "filename", "size", "mime", "md5", "sha1",
                         "sha256", "yara", "flags", "errors"])
        for (doc, p), (fname, content) in zip(rows, payloads):
            writer.writerow([doc["scan_id"], p["payload_id"], p["parent_id"] or "", p["depth"],
                             "'" + fname if fname.startswith("=") else fname, len(content), p["mime"],
                             hashlib.md5(content).hexdigest(), hashlib.sha1(content).hexdigest(),
                             hashlib.sha256(content).hexdigest(), ";".join(rules_of(content, rules)), "", ""])
    elif name == "payloads":
        for (doc, p), (fname, content) in zip(rows, payloads):
            out.write(f"{doc['scan_id']} {hashlib.sha256(content).hexdigest()} {len(content)} {p['mime']} "
                      f"yara={','.join(rules_of(content, rules)) or '-'} flags=- {fname}\n")
    else:
        for doc in docs:
            out.write(f"# Scan {doc['scan_id']}\n\n- Date: {doc['date']}\n- Source: {doc['source']['path']}\n"
                      f"- Payloads: {doc['payloads']}\n- Errors: 0\n\n"
                      "| depth | name | MIME type | size | sha256 | YARA | flags |\n|---|---|---|---|---|---|---|\n")
            for (d, p), (fname, content) in zip(rows, payloads):
                if d is doc:
                    cell = fname.replace("|", "\\|").replace("`", "\\`")
                    out.write(f"| {p['depth']} | {cell} | {p['mime']} | {len(content)} | "
                              f"`{hashlib.sha256(content).hexdigest()}` | {', '.join(rules_of(content, rules)) or '-'} | - |\n")
            out.write("\n\n")
    assert proc.stdout.decode() == out.getvalue()
