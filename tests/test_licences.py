"""No GPL library in the default install (the project is Apache-2.0, as stoQ was)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement

GPL = re.compile(r"\bA?GPL|GNU (Affero )?General Public License", re.I)
LGPL = re.compile(r"LGPL|Lesser General Public", re.I)


def licence_text(dist_name: str) -> str:
    meta = distribution(dist_name).metadata
    parts = [meta.get("License-Expression") or "", (meta.get("License") or "")[:200]]
    parts += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return " | ".join(parts)


def default_closure(root: str) -> dict[str, str]:
    """Every distribution the default install of ``root`` pulls in (no extras), with its licence."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional platform marker dependency not installed here
        seen[key] = licence_text(name)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_no_gpl_in_the_default_install() -> None:
    closure = default_closure("stoq-analysis")
    assert {"celery", "yara-python", "pefile", "sqlalchemy", "olefile", "pdfminer-six"} <= set(closure)
    assert "oletools" not in closure and "pcodedmp" not in closure  # the optional extra only
    offenders = {name: text for name, text in closure.items() if GPL.search(text) and not LGPL.search(text)}
    assert offenders == {}
