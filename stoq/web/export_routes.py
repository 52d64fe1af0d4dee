"""``GET /api/scans/{scan_id}/export/{fmt}``: a stored scan as a STIX 2.1 bundle or a MISP event, the
JSON ``stoq export`` prints (docs/exports.md). Included by :func:`stoq.web.app.create_app`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response

from stoq.web.api import ERRORS, Problem, ServiceDep, bearer_scheme, json_response

router = APIRouter(prefix="/api", tags=["api"], dependencies=[Depends(bearer_scheme)])


class ExportFormat(str, Enum):
    """The export formats."""

    stix = "stix"
    misp = "misp"


@router.get("/scans/{scan_id}/export/{fmt}",
            responses=ERRORS | {
                200: {"content": {"application/json": {}},
                      "description": "A STIX 2.1 bundle (stix) or a MISP event, {\"Event\": {...}} (misp)."},
                404: {"model": Problem, "description": "No such scan."},
                409: {"model": Problem, "description": "The scan is pending or failed: no document."},
                501: {"model": Problem, "description": "The server lacks the extra 'exports'."}})
def export(svc: ServiceDep, scan_id: Annotated[str, Path(max_length=64)], fmt: ExportFormat) -> Response:
    """A finished scan as a STIX 2.1 bundle or a MISP event (docs/exports.md), offered as a download."""
    from stoq.exports import ExportUnavailable, export_document

    view = svc.scan(scan_id)
    if view is None:
        raise HTTPException(404, f"no scan {scan_id}")
    if view.document is None:
        raise HTTPException(409, f"scan {scan_id} is {view.state}: no document")
    try:
        exported = export_document(view.document, fmt.value)
    except ExportUnavailable as exc:
        raise HTTPException(501, str(exc)) from None
    answer = json_response(exported)
    # the stored scan id (a UUID), never text a file controls
    answer.headers["content-disposition"] = f'attachment; filename="stoq-{view.document["scan_id"]}.{fmt.value}.json"'
    return answer
