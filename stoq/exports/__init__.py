"""Exports of a scan document to other formats: STIX 2.1 (``stix``) and a MISP event (``misp``).

They need the optional extra ``exports`` (``pip install 'stoq-analysis[exports]'``: stix2,
stix2-validator, pymisp). Without it, :func:`export_document` raises :class:`ExportUnavailable`, whose
message says what to install. The mapping is described in docs/exports.md.
"""

from __future__ import annotations

from typing import Any, Literal

#: The export formats, as ``stoq export --to`` and the web API name them.
FORMATS = ("stix", "misp")
ExportFormat = Literal["stix", "misp"]


class ExportUnavailable(RuntimeError):
    """The libraries an export needs are not installed (the extra ``exports``)."""


def export_document(document: dict[str, Any], fmt: ExportFormat) -> dict[str, Any]:
    """``document`` (a scan document, docs/results.md) as a STIX 2.1 bundle (``stix``) or a MISP event
    (``misp``, ``{"Event": {...}}``), as a JSON object."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (stix or misp)")
    try:
        if fmt == "stix":
            from stoq.exports.stix import to_stix as convert
        else:
            from stoq.exports.misp import to_misp as convert
    except ImportError as exc:
        raise ExportUnavailable(f"the {fmt} export needs the extra 'exports' ({exc.name or exc} is not installed): "
                                "pip install 'stoq-analysis[exports]'") from None
    return convert(document)


__all__ = ["FORMATS", "ExportFormat", "ExportUnavailable", "export_document"]
