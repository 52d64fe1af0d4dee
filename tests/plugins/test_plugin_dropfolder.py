"""dropfolder: the payload appears under its sha256, whole, through a rename (no temporary file left);
the filters (MIME prefix, dispatch rule, size) and the sandbox's report read back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

from stoq.plugin import Payload
from stoq_plugins.dropfolder import DropfolderPlugin


def test_the_payload_is_written_once_under_its_sha256(tmp_path: Path, make_payload: Callable[..., Payload]) -> None:
    content = bytes(range(256)) * 100
    payload = make_payload(content)
    opts = DropfolderPlugin.Options(folder=tmp_path, suffix=".bin")
    result = DropfolderPlugin().scan(payload, opts)
    target = tmp_path / f"{hashlib.sha256(content).hexdigest()}.bin"
    assert result.data == {"dropped": True, "path": str(target), "report": None} and result.flags == []
    assert target.read_bytes() == content and [p.name for p in tmp_path.iterdir()] == [target.name]
    assert DropfolderPlugin().scan(payload, opts).data["dropped"] is False  # there already: not rewritten


def test_filters(tmp_path: Path, make_payload: Callable[..., Payload]) -> None:
    plugin = DropfolderPlugin()
    pdf = make_payload(b"%PDF-1.4 x", mime="application/pdf")
    assert plugin.scan(pdf, DropfolderPlugin.Options(folder=tmp_path, mimes=["application/x-dosexec"])).data is None
    assert plugin.scan(pdf, DropfolderPlugin.Options(folder=tmp_path, rules=["suspicious_pdf"])).data is None
    assert plugin.scan(pdf, DropfolderPlugin.Options(folder=tmp_path, max_bytes=3)).data is None
    assert list(tmp_path.iterdir()) == []
    matched = dataclasses.replace(pdf, dispatch_rules=("suspicious_pdf",))
    assert plugin.scan(matched, DropfolderPlugin.Options(folder=tmp_path, rules=["suspicious_pdf"],
                                                         mimes=["application/pdf"])).data["dropped"] is True
    assert (tmp_path / pdf.sha256).read_bytes() == b"%PDF-1.4 x"


def test_the_sandbox_report_is_attached(tmp_path: Path, make_payload: Callable[..., Payload]) -> None:
    payload = make_payload(b"sample")
    reports = tmp_path / "reports"
    reports.mkdir()
    opts = DropfolderPlugin.Options(folder=tmp_path, reports=reports)
    assert DropfolderPlugin().scan(payload, opts).data["report"] is None
    verdict = {"alert": {"severity": "majr", "explanation": {"malware-detected": {"malware": [{"name": "X"}]}}}}
    (reports / f"{payload.sha256}.json").write_text(json.dumps(verdict))
    assert DropfolderPlugin().scan(payload, opts).data["report"] == verdict
    (reports / f"{payload.sha256}.json").write_text("{not json")
    assert DropfolderPlugin().scan(payload, opts).flags == ["dropfolder:bad-report"]


def test_no_folder_is_a_flag(make_payload: Callable[..., Payload]) -> None:
    result = DropfolderPlugin().scan(make_payload(b"x"), DropfolderPlugin.Options())
    assert result.data is None and result.flags == ["dropfolder:no-folder"]
