#!/usr/bin/env python3
"""Cost of the results view's scan page (stoq/web/pages.py) for scans of 100 to 10,000 payloads: the
page model of the document and the rendered template, in process (no HTTP); median of 5 runs.

Each payload is a child of the root carrying a YARA match, a flag and two plugins' output, so every
part of a tree row is drawn.

Usage: bench/web_pages.py   (prints a Markdown table on stdout)
"""

from __future__ import annotations

import hashlib
from typing import Any

from _timing import median
from stoq.web import pagemodel, pages

SIZES = (99, 999, 9_999)  # children: scans of 100, 1,000 and 10,000 payloads


def _payload(pid: str, parent: str | None, name: str, workers: dict[str, Any]) -> dict[str, Any]:
    data = pid.encode()
    return {"payload_id": pid, "parent_id": parent, "depth": 0 if parent is None else 1, "filename": name,
            "extracted_by": None if parent is None else "decompress", "meta": {}, "duplicate_of": None,
            "size": len(data), "md5": hashlib.md5(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(), "sha512": hashlib.sha512(data).hexdigest(),
            "mime": "text/plain", "workers": workers, "flags": [] if parent is None else ["limit:depth"]}


def document(children: int) -> dict[str, Any]:
    hit = {"matches": [{"rule": "bench_rule", "namespace": "default", "tags": [], "meta": {}, "strings": []}]}
    results = [_payload("root", None, "root.zip", {})]
    results += [_payload(f"c{i}", "root", f"member-{i}.txt", {"yara": hit, "entropy": {"entropy": 4.2}})
                for i in range(children)]
    return {"schema_version": "1.2", "scan_id": "bench", "date": "2026-12-06T00:00:00Z", "source": {"path": "root.zip"},
            "payloads": len(results), "results": results, "errors": []}


def render(doc: dict[str, Any]) -> str:
    return pages.templates.get_template("scan.html").render(
        ui="/ui", static_url="/ui/static/stoq.css", version="bench", auth_mode="none", signed_in=False, csrf="",
        nav="", view=pagemodel.page_tree(doc), scan_id=doc["scan_id"], 
        inline_outputs=doc["payloads"] <= pages.INLINE_OUTPUTS)


def main() -> None:
    print("| payloads | page model + render | HTML |")
    print("|---|---|---|")
    for size in SIZES:
        doc = document(size)
        seconds = median(lambda: render(doc))
        print(f"| {size + 1:,} | {seconds * 1000:.1f} ms | {len(render(doc).encode()) // 1024:,} KiB |")


if __name__ == "__main__":
    main()
