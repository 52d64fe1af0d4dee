"""Jinja2 templates, rendered in a sandbox: ``--template`` and the connectors that render (``emailer``).

A template comes from the user (``--template FILE``) or from a configuration file, and the values it
renders come from hostile files (names, plugin output). Every template is therefore compiled by
Jinja2's :class:`~jinja2.sandbox.SandboxedEnvironment`, which refuses attribute access to private and
internal names (``__class__``, ``__subclasses__``, ``__globals__``, a function's ``func_code``...) with
a ``SecurityError``, so a template cannot climb from a string to ``object`` and to every loaded class.

Autoescaping is off for text (the CLI's output, a plain-text e-mail) and on for templates whose name
ends in ``.html``, ``.htm`` or ``.xml`` (HTML escaping of every value, ``| safe`` to opt out). Undefined
names are errors (``StrictUndefined``). ``builtin:NAME`` names a template bundled with stoq
(:data:`BUILTINS`, in ``stoq/builtin_templates/NAME.j2``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from stoq.terminal import safe

__all__ = ["BUILTINS", "BUILTIN_PREFIX", "TemplateFailure", "compile_template", "environment", "template_source"]

BUILTIN_PREFIX = "builtin:"
_DIR = Path(__file__).resolve().parent / "builtin_templates"
#: The bundled templates: name -> what each renders.
BUILTINS = {
    "payloads": "one line per payload: scan id, sha256, size, MIME type, YARA rules, flags, name",
    "csv": "CSV of every payload's hashes and verdicts (YARA rules, flags, errors), one header line",
    "markdown": "a Markdown report per scan: the payload tree as a table, YARA matches, errors",
    "email": "the emailer connector's default plain-text summary of a scan",
}
#: Leading characters that make a spreadsheet read a cell as a formula (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


class TemplateFailure(Exception):
    """A template that cannot be read, does not compile, or fails on a document."""


def csv_row(values: Any) -> str:
    """One CSV line (RFC 4180 quoting, ``\\n`` ended). A text cell that a spreadsheet would run as a
    formula (beginning with ``= + - @``, a tab or a CR) is prefixed with ``'``: file names are hostile."""
    cells = [("'" + v if isinstance(v, str) and v.startswith(_FORMULA) else v) for v in values]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def yara_rules(payload: dict[str, Any]) -> list[str]:
    """The names of the YARA rules that matched a payload of a document (its ``yara`` worker output)."""
    yara = payload.get("workers", {}).get("yara")
    matches = yara.get("matches") if isinstance(yara, dict) else None
    return [str(m.get("rule", "?")) for m in matches if isinstance(m, dict)] if isinstance(matches, list) else []


def errors_of(doc: dict[str, Any], payload: dict[str, Any]) -> list[str]:
    """``plugin:kind`` of each error of a document on one payload."""
    return [f"{e['plugin']}:{e['kind']}" for e in doc.get("errors", ()) if e.get("payload_id") == payload.get("payload_id")]


def md_cell(value: object) -> str:
    """Text for a Markdown table cell: terminal-safe, with ``|`` and backticks escaped."""
    return safe(value).replace("|", "\\|").replace("`", "\\`")


def environment(autoescape: bool = False) -> Any:
    """A sandboxed Jinja2 environment with stoq's filters: ``terminal`` (:func:`stoq.terminal.safe`),
    ``csvrow`` (:func:`csv_row`), ``mdcell`` (:func:`md_cell`), ``yara_rules`` (:func:`yara_rules`) and
    ``errors_of`` (:func:`errors_of`: ``doc | errors_of(payload)``)."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=autoescape)
    env.filters.update(terminal=safe, csvrow=csv_row, mdcell=md_cell, yara_rules=yara_rules, errors_of=errors_of)
    return env


def template_source(spec: str | Path) -> tuple[str, str]:
    """(name, text) of ``builtin:NAME`` or of a template file."""
    text_spec = str(spec)
    if text_spec.startswith(BUILTIN_PREFIX):
        name = text_spec[len(BUILTIN_PREFIX):]
        if name not in BUILTINS:
            raise TemplateFailure(f"no bundled template {name!r} (bundled: {', '.join(sorted(BUILTINS))})")
        return f"{name}.j2", (_DIR / f"{name}.j2").read_text(encoding="utf-8")
    try:
        return Path(spec).name, Path(spec).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateFailure(f"template {spec}: {exc}") from exc


def compile_template(spec: str | Path) -> Any:
    """The compiled template of ``builtin:NAME`` or a file; autoescaped when its name ends in .html,
    .htm or .xml. A ``TemplateFailure`` says why it cannot be used."""
    import jinja2

    name, text = template_source(spec)
    try:
        return environment(autoescape=name.endswith((".html", ".htm", ".xml"))).from_string(text)
    except jinja2.TemplateError as exc:
        raise TemplateFailure(f"template {spec}: {exc}") from exc


def render(template: Any, **context: Any) -> str:
    """Renders; a template error (undefined name, sandbox refusal) is a ``TemplateFailure``."""
    import jinja2

    try:
        return str(template.render(**context))
    except jinja2.TemplateError as exc:  # SecurityError is a TemplateError
        raise TemplateFailure(str(exc)) from exc
