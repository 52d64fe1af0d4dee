"""The results view (stoq/web/pages.py): pages rendered from scan documents, a real ``stoq serve``
process read over HTTP, and Debian's headless Chromium submitting a corpus zip through the form."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from helpers import sha256

pytest.importorskip("fastapi", reason="the web extra: pip install 'stoq-analysis[web]'")

from stoq.web import pagemodel, pages  # noqa: E402

HOSTILE = "<script>alert(1)</script>.txt"


def _payload(pid: str, parent: str | None, depth: int, name: str | None, data: bytes, **extra: Any) -> dict[str, Any]:
    import hashlib

    return {
        "payload_id": pid, "parent_id": parent, "depth": depth, "filename": name,
        "extracted_by": None if parent is None else "decompress", "meta": {}, "duplicate_of": None,
        "size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": sha256(data), "sha512": hashlib.sha512(data).hexdigest(), "mime": "text/plain",
        "workers": {}, "flags": [], **extra,
    }


def _document() -> dict[str, Any]:
    """A root zip, a child with a hostile name and a YARA hit, its duplicate, one error."""
    yara = {"matches": [{"rule": "lure<b>", "namespace": "default", "tags": [], "meta": {},
                         "strings": [{"identifier": "$a", "offset": 3, "data": "</pre><script>x()</script>"}]}]}
    results = [
        _payload("r", None, 0, "outer.zip", b"zip", mime="application/zip"),
        _payload("a", "r", 1, HOSTILE, b"text", workers={"yara": yara}, flags=["limit:depth"]),
        _payload("b", "r", 1, "copy\u202etxt.exe", b"text", duplicate_of="a"),
    ]
    return {"schema_version": "1.2", "scan_id": "s-1", "date": "2026-12-06T09:00:00.000001Z",
            "source": {"path": "/tmp/outer.zip", "meta": {"case": "<i>42</i>"}}, "payloads": 3, "results": results,
            "errors": [{"payload_id": "a", "plugin": "peinfo", "kind": "error", "message": "ValueError: <img src=x onerror=y()>"}]}


def _render(name: str, **context: Any) -> str:
    common = dict(ui="/ui", static_url="/ui/static/stoq.css", version="0", auth_mode="token", signed_in=True,
                  csrf="c", nav="")
    return pages.templates.get_template(name).render(**common, **context)


def test_scan_view_tree() -> None:
    view = pagemodel.page_tree(_document())
    assert [n.id for n in view.roots] == ["r"]
    assert [c.id for c in view.root.children] == ["a", "b"]
    assert view.by_id["b"].duplicate is view.by_id["a"]
    assert view.by_id["b"].path == "outer.zip > copy\\u202etxt.exe"
    assert [e["plugin"] for e in view.by_id["a"].errors] == ["peinfo"]
    assert (view.yara_count, view.flag_count, view.duplicate_count) == (1, 1, 1)
    assert view.by_id["a"].yara_rules == ["lure<b>"]


def test_everything_a_file_controls_is_text() -> None:
    doc = _document()
    view = pagemodel.page_tree(doc)
    scan = _render("scan.html", view=view, scan_id="s-1")
    payload = _render("payload.html", scan_id="s-1", node=view.by_id["a"], ancestors=[view.root])
    for html in (scan, payload):
        assert "<script" not in html and "<img" not in html and "<b>" not in html and "<i>" not in html
        assert "\u202e" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in scan
    assert "copy\\u202etxt.exe" in scan  # the bidi override shown, not obeyed
    assert "ValueError: &lt;img src=x onerror=y()&gt;" in scan
    assert "&lt;i&gt;42&lt;/i&gt;" in scan
    assert "&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in payload  # in the YARA table and the JSON
    assert payload.count("lure&lt;b&gt;") == 2  # the hit's badge, and the rule in the plugin's JSON


def test_plugin_json() -> None:
    text, cut = pagemodel.plugin_json({"name": "a\u202eb\u200bc\n", "n": 1})
    assert (text, cut) == ('{\n  "name": "a\\u202eb\\u200bc\\n",\n  "n": 1\n}', False)
    text, cut = pagemodel.plugin_json({"big": "x" * pagemodel.MAX_JSON_CHARS})
    assert cut and len(text) == pagemodel.MAX_JSON_CHARS


def test_size_text() -> None:
    assert [pagemodel.size_text(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**40)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 TiB"]


def test_local_redirects_only() -> None:
    assert pages._local("/ui/scans/x?a=1") == "/ui/scans/x?a=1"
    for target in ("//evil.example/ui/", "https://evil.example/", "/ui\\..", "/api/scans", ""):
        assert pages._local(target) == "/ui/submit", target
